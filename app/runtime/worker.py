"""The one MLX thread: admission, a bounded queue, time limits, cancellation and health state.

MLX streams are thread-local (mlx >= 0.31), so loading, warm-up and every request run on this
worker's single thread. A request's results come back as one async stream of events (each
object as it completes, then one `ModelOutput`) through its `Channel`; closing the stream
cancels the request. The worker runs whatever backend it is given (the checkpoints of
`app.runtime.pool`, or a fake in tests) and imports nothing of MLX itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from app.errors import Busy, Cancelled, NotReady, ServiceError, TimedOut
from app.model.messages import ModelEvent, ModelOutput, ModelRequest
from app.runtime.catalog import Checkpoint
from app.runtime.channel import Channel

log = logging.getLogger(__name__)

State = Literal["loading", "ok", "error"]


@dataclass(frozen=True)
class BackendInfo:
    """What the backend reports about itself once the default model is loaded."""

    device: str  # "gpu" or "cpu"
    random_weights: bool  # the default model is the random-weight demo


class Backend(Protocol):
    """Loads, runs one request at a time, unloads; only ever called on the worker thread."""

    name: str  # the default model's id

    def load(self) -> BackendInfo:
        """Load the default model, at start-up."""
        ...

    def unload(self) -> None:
        """Free every model's memory; `run` loads what it needs again."""
        ...

    def loaded_models(self) -> list[str]:
        """The models in memory now (safe to call from any thread)."""
        ...

    def checkpoint(self, model_id: str | None) -> Checkpoint:
        """The installed checkpoint a request names (None: the default), from its files alone,
        without loading it; any thread. Domain errors (400 unknown, 503 broken) otherwise."""
        ...

    def run(self, request: ModelRequest, cancelled: Callable[[], bool]) -> Iterator[ModelEvent]:
        """Each object as soon as it is complete, then the `ModelOutput`."""
        ...


@dataclass(frozen=True)
class WorkerStatus:
    state: State
    reason: str | None
    model: str
    info: BackendInfo | None
    loaded_at: datetime | None
    requests_served: int
    waiting: int  # admitted, not started yet
    running: int  # on the MLX thread now (0 or 1)
    loaded: bool  # in memory now; False after an idle unload (the next request loads it)
    expires_at: datetime | None  # when an idle model will be unloaded, if it will


@dataclass(eq=False)
class _Job:
    """One admitted request: waiting until the worker thread starts it."""

    request: ModelRequest
    channel: Channel[ModelEvent]
    started: bool = False
    finished: bool = False  # counted out of `waiting`/`running` (exactly once)


class ModelStream:
    """One request's events, as an async iterator; `aclose` (or leaving `async with`) cancels
    it, and the time limit ends it with a 504. Always close it: `async with worker.submit(...)`.
    """

    def __init__(self, worker: Worker, job: _Job, deadline: float) -> None:
        self._worker, self._job, self._deadline = worker, job, deadline

    def __aiter__(self) -> ModelStream:
        return self

    async def __anext__(self) -> ModelEvent:
        try:
            async with asyncio.timeout_at(self._deadline):
                event = await self._job.channel.get()
        except TimeoutError as exc:
            await self.aclose()
            raise TimedOut(
                f"The request took longer than {self._worker.request_timeout_s:g} s "
                "(SEGMENT_REQUEST_TIMEOUT_S); try a smaller max_new_tokens or fewer classes."
            ) from exc
        except Cancelled as exc:
            raise NotReady("The service is shutting down; retry once it is back.") from exc
        if isinstance(event, ModelOutput):
            self._worker.served += 1
        return event

    async def aclose(self) -> None:
        """Stop the request: one that waits never starts, one that runs stops at its next
        token. Idempotent."""
        self._worker.withdraw(self._job)

    async def __aenter__(self) -> ModelStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Worker:
    """`submit` is the only way to the model; everything else is lifecycle and counts."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_queue: int,
        request_timeout_s: float,
        keep_alive_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.keep_alive_s = keep_alive_s  # None: never unload
        self.served = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-worker")
        self._state: State = "loading"
        self._reason: str | None = "loading the model"
        self._info: BackendInfo | None = None
        self._loaded_at: datetime | None = None
        self._waiting = 0
        self._running = 0
        self._counts = threading.Lock()  # the loop and the worker thread both move the counts
        self._jobs: set[_Job] = set()
        self._loading: Future[None] | None = None
        self._expires_at: datetime | None = None
        self._unload_timer: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Future[None]:
        """Begin loading on the worker; returns at once so /health can answer 503 meanwhile."""
        if self._loading is None:
            self._loading = self._thread.submit(self._load)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: nobody to time the idle unload
                return self._loading
            self._loading.add_done_callback(
                lambda _: loop.call_soon_threadsafe(self._schedule_unload)
            )
        return self._loading

    async def wait_ready(self) -> WorkerStatus:
        """Wait for the load to finish (successfully or not) and report how it went."""
        await asyncio.wrap_future(self.start())
        return self.status()

    def abandon_all(self) -> None:
        """Stop taking work; queued and running jobs stop between tokens and answer 503.

        Called when a graceful shutdown's drain time is up, while their requests can still
        be answered, and again by `close`.
        """
        self._state, self._reason = "error", "shutting down"
        if self._unload_timer is not None:
            self._unload_timer.cancel()
        for job in list(self._jobs):
            job.channel.cancelled.set()
            with self._counts:
                waiting = not job.started and not job.finished
                if waiting:  # it will never start: its reader hears so now
                    job.finished = True
                    self._waiting -= 1
            if waiting:
                job.channel.close(Cancelled("abandoned before it started"))

    async def close(self) -> None:
        """Abandon all jobs and release the worker thread."""
        self.abandon_all()
        await asyncio.to_thread(self._thread.shutdown, wait=True, cancel_futures=True)

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            state=self._state,
            reason=self._reason,
            model=self.backend.name,
            info=self._info,
            loaded_at=self._loaded_at,
            requests_served=self.served,
            waiting=self._waiting,
            running=self._running,
            loaded=bool(self.backend.loaded_models()),
            expires_at=self._expires_at,
        )

    def _load(self) -> None:
        try:
            started = time.perf_counter()
            self._info = self.backend.load()
            self._loaded_at = datetime.now(UTC)
            self._state, self._reason = "ok", None
            log.info(
                "model %s ready on %s in %.1f s",
                self.backend.name,
                self._info.device,
                time.perf_counter() - started,
            )
        except (FileNotFoundError, ServiceError) as exc:  # expected before `make models`
            self._state, self._reason = "error", getattr(exc, "detail", None) or str(exc)
            log.warning("model not available (expected until it is installed): %s", self._reason)
        except Exception as exc:
            self._state, self._reason = "error", str(exc) or exc.__class__.__name__
            log.exception("model failed to load: %s", self._reason)

    # -- requests ----------------------------------------------------------------------------
    def check_admission(self) -> None:
        """Raise what `submit` would raise at once (not ready, queue full)."""
        if self._state != "ok":
            raise NotReady(self._not_ready_detail())
        if self._waiting >= self.max_queue:
            raise Busy(
                f"{self._waiting} requests are already waiting for the model "
                f"(SEGMENT_MAX_QUEUE={self.max_queue}); try again shortly.",
                retry_after_s=2,
            )

    def submit(self, request: ModelRequest) -> ModelStream:
        """Admit one request and queue it on the worker thread; its events come back as a
        stream, within SEGMENT_REQUEST_TIMEOUT_S of now (queue wait included)."""
        self.check_admission()
        job = _Job(request, Channel())
        with self._counts:
            self._waiting += 1
        self._jobs.add(job)
        self._cancel_unload()
        self._thread.submit(self._run, job)
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        return ModelStream(self, job, deadline)

    def withdraw(self, job: _Job) -> None:
        """On the loop: the job's caller is done with it (finished, failed or gone)."""
        job.channel.cancelled.set()
        with self._counts:
            if not job.started and not job.finished:  # it never will start: count it out now
                job.finished = True
                self._waiting -= 1
        if job in self._jobs:
            self._jobs.discard(job)
            self._schedule_unload()

    def _not_ready_detail(self) -> str:
        if self._state == "loading":
            return "The model is still loading; retry in a few seconds (GET /health says when)."
        return f"The model is not available: {self._reason}"

    def _run(self, job: _Job) -> None:
        """On the worker thread: run the job's events into its channel, unless abandoned."""
        with self._counts:
            if job.finished or job.channel.cancelled.is_set():
                return  # withdrawn before it started; already counted out
            job.started = True
            self._waiting -= 1
            self._running += 1
        try:
            before = set(self.backend.loaded_models())
            for event in self.backend.run(job.request, job.channel.cancelled.is_set):
                job.channel.put(event)
            if set(self.backend.loaded_models()) - before:  # loaded (again) for this request
                self._loaded_at = datetime.now(UTC)
            job.channel.close()
        except BaseException as exc:  # handed to the request's reader, who reports it
            job.channel.close(exc)
        finally:
            with self._counts:
                job.finished = True
                self._running -= 1

    # -- keep-alive --------------------------------------------------------------------------
    def _cancel_unload(self) -> None:
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None
        self._expires_at = None

    def _schedule_unload(self) -> None:
        """On the event loop: once nothing waits or runs, unload after SEGMENT_KEEP_ALIVE."""
        self._cancel_unload()
        if self.keep_alive_s is None or self._state != "ok" or self._jobs:
            return
        loop = asyncio.get_running_loop()
        self._expires_at = datetime.now(UTC) + timedelta(seconds=self.keep_alive_s)
        self._unload_timer = loop.call_later(self.keep_alive_s, self._unload_when_idle)

    def _unload_when_idle(self) -> None:
        self._unload_timer = None
        if self._state == "ok" and not self._jobs:
            self._thread.submit(self._unload)

    def _unload(self) -> None:
        """Worker thread: a request that came in meanwhile keeps the model."""
        if not self.backend.loaded_models() or self._waiting or self._running:
            return
        self.backend.unload()
        self._expires_at = None
        log.info(
            "model %s unloaded after %g s idle (SEGMENT_KEEP_ALIVE); the next request loads it",
            self.backend.name,
            self.keep_alive_s,
        )
