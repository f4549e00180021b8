"""The one MLX thread: admission, a bounded queue, continuous batching, time limits,
cancellation and health state.

MLX streams are thread-local (mlx >= 0.31), so loading, warm-up and every request run on this
worker's single thread. Requests of the same model decode together, up to SEGMENT_MAX_BATCH at
once: one arriving while others decode is prefilled and joins the batch at the next step; one
that finishes or is cancelled leaves at once; one for another model waits until the batch has
drained (no model swap under a running batch), and nothing overtakes it. A request's results
come back as one async stream of events (each object as it completes, then one `ModelOutput`)
through its `Channel`; closing the stream cancels the request. The worker runs whatever backend
it is given (the checkpoints of `app.runtime.pool`, or a fake in tests) and imports nothing of
MLX itself.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from app.errors import Busy, Cancelled, NotReady, ServiceError, TimedOut
from app.model.messages import ModelEvent, ModelOutput, ModelRequest
from app.runtime.catalog import Checkpoint
from app.runtime.channel import Channel

log = logging.getLogger(__name__)

State = Literal["loading", "ok", "error"]
Keyed = tuple[Hashable, ModelEvent]


@dataclass(frozen=True)
class BackendInfo:
    """What the backend reports about itself once the default model is loaded."""

    device: str  # "gpu" or "cpu"
    random_weights: bool  # the default model is the random-weight demo


class ModelBatch(Protocol):
    """One loaded model's running batch; events come back keyed by the key given to `start`."""

    @property
    def active(self) -> int: ...

    def start(self, key: Hashable, request: ModelRequest) -> list[Keyed]:
        """Prefill the request and add it to the batch."""
        ...

    def step(self) -> list[Keyed]:
        """One token more for every request in the batch."""
        ...

    def drop(self, key: Hashable) -> None:
        """The request leaves the batch now."""
        ...


class Backend(Protocol):
    """Loads, batches, unloads; only ever called on the worker thread (`loaded_models` and
    `checkpoint` from any thread)."""

    name: str  # the default model's id

    def load(self) -> BackendInfo:
        """Load the default model, at start-up."""
        ...

    def unload(self) -> None:
        """Free every model's memory; `batch` loads what it needs again."""
        ...

    def loaded_models(self) -> list[str]:
        """The models in memory now."""
        ...

    def checkpoint(self, model_id: str | None) -> Checkpoint:
        """The installed checkpoint a request names (None: the default), from its files alone,
        without loading it. Domain errors (400 unknown, 503 broken) otherwise."""
        ...

    def batch(self, model_id: str) -> tuple[ModelBatch, float | None]:
        """The model's batch, loaded first if it was not in memory (ms that took)."""
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
    running: int  # decoding in the batch now
    loaded: bool  # in memory now; False after an idle unload (the next request loads it)
    expires_at: datetime | None  # when an idle model will be unloaded, if it will
    largest_batch: int  # the most requests that have decoded together since the start


@dataclass(eq=False)
class _Job:
    """One admitted request: waiting until the worker thread starts it."""

    request: ModelRequest
    channel: Channel[ModelEvent]
    submitted: float  # perf_counter() when admitted
    started: bool = False
    finished: bool = False  # counted out of `waiting`/`running` (exactly once)
    queue_wait_ms: float = 0.0
    load_ms: float | None = None  # the model was loaded for this request


class _Unload:
    """Inbox message: unload if idle."""


class _Stop:
    """Inbox message: end the thread."""


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
        """Stop the request: one that waits never starts, one that runs leaves the batch at
        its next step. Idempotent."""
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
        max_batch: int = 1,
    ) -> None:
        self.backend = backend
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.keep_alive_s = keep_alive_s  # None: never unload
        self.max_batch = max_batch
        self.served = 0
        self._state: State = "loading"
        self._reason: str | None = "loading the model"
        self._info: BackendInfo | None = None
        self._loaded_at: datetime | None = None
        self._waiting = 0
        self._running = 0
        self._largest_batch = 0
        self._counts = threading.Lock()  # the loop and the worker thread both move the counts
        self._jobs: set[_Job] = set()  # admitted and not yet withdrawn (the loop's view)
        self._inbox: queue.SimpleQueue[_Job | _Unload | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready: Future[None] = Future()
        self._expires_at: datetime | None = None
        self._unload_timer: asyncio.TimerHandle | None = None
        # The worker thread's own: the queue in arrival order, the running batch.
        self._pending: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._batch: ModelBatch | None = None
        self._batch_model: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Future[None]:
        """Start the thread, which loads first; returns at once so /health can answer 503
        meanwhile. The future is done once the load succeeded or failed."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="mlx-worker", daemon=True)
            self._thread.start()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: nobody to time the idle unload
                return self._ready
            self._ready.add_done_callback(
                lambda _: loop.call_soon_threadsafe(self._schedule_unload)
            )
        return self._ready

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
        """Abandon all jobs and end the worker thread."""
        self.abandon_all()
        if self._thread is not None:
            self._inbox.put(_Stop())
            await asyncio.to_thread(self._thread.join)

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
            largest_batch=self._largest_batch,
        )

    # -- requests (the event loop's side) ----------------------------------------------------
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
        """Admit one request and queue it for the worker thread; its events come back as a
        stream, within SEGMENT_REQUEST_TIMEOUT_S of now (queue wait included)."""
        self.check_admission()
        job = _Job(request, Channel(), submitted=time.perf_counter())
        with self._counts:
            self._waiting += 1
        self._jobs.add(job)
        self._cancel_unload()
        self._inbox.put(job)
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

    # -- the worker thread -------------------------------------------------------------------
    def _serve(self) -> None:
        """Load, then: take what arrived, start what fits in the batch, drop what was
        cancelled, step the batch; wait only when there is nothing to step."""
        self._load()
        while True:
            idle = not self._active
            try:
                messages = [self._inbox.get(block=idle and not self._pending)]
            except queue.Empty:
                messages = []
            while not self._inbox.empty():
                messages.append(self._inbox.get_nowait())
            for message in messages:
                if isinstance(message, _Stop):
                    self._stop_all()
                    return
                if isinstance(message, _Unload):
                    self._unload()
                else:
                    self._pending.append(message)
            self._admit()
            self._drop_cancelled()
            if self._active:
                self._step()

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
        finally:
            self._ready.set_result(None)

    def _admit(self) -> None:
        """Start waiting jobs in arrival order while the batch has room; one for another model
        than the batch's waits (and so do those after it) until the batch is empty."""
        while self._pending and len(self._active) < self.max_batch:
            job = self._pending[0]
            if job.finished or job.channel.cancelled.is_set():
                self._pending.popleft()  # withdrawn: already counted out by the loop
                continue
            model_id = job.request.model_id
            if self._active and model_id != self._batch_model:
                return
            self._pending.popleft()
            with self._counts:
                if job.finished:  # withdrawn just now
                    continue
                job.started = True
                self._waiting -= 1
                self._running += 1
            job.queue_wait_ms = (time.perf_counter() - job.submitted) * 1000
            try:
                if self._batch is None or model_id != self._batch_model:
                    self._batch = self._batch_model = None  # a failed swap may close it
                    self._batch, job.load_ms = self.backend.batch(model_id)
                    self._batch_model = model_id
                    if job.load_ms is not None:
                        self._loaded_at = datetime.now(UTC)
                self._active.append(job)
                self._largest_batch = max(self._largest_batch, len(self._active))
                self._deliver(self._batch.start(job, job.request))
            except BaseException as exc:  # this request's failure, reported to its reader
                self._fail(job, exc)

    def _drop_cancelled(self) -> None:
        for job in list(self._active):
            if job.channel.cancelled.is_set():
                assert self._batch is not None
                self._batch.drop(job)
                self._fail(job, Cancelled("abandoned"))

    def _step(self) -> None:
        assert self._batch is not None
        try:
            events = self._batch.step()
        except BaseException as exc:  # the batch cannot go on: every request in it hears
            for job in list(self._active):
                self._batch.drop(job)
                self._fail(job, exc)
            return
        self._deliver(events)

    def _deliver(self, events: list[Keyed]) -> None:
        for key, event in events:
            job = key
            assert isinstance(job, _Job)
            if isinstance(event, ModelOutput):
                extra = {"queue_wait": job.queue_wait_ms}
                if job.load_ms is not None:
                    extra = {"load": job.load_ms, **extra}
                job.channel.put(replace(event, timings_ms={**extra, **event.timings_ms}))
                self._finish(job)
                job.channel.close()
            else:
                job.channel.put(event)

    def _fail(self, job: _Job, error: BaseException) -> None:
        if job in self._active:
            self._finish(job)
        else:
            with self._counts:
                job.finished = True
                self._running -= 1
        job.channel.close(error)

    def _finish(self, job: _Job) -> None:
        self._active.remove(job)
        with self._counts:
            job.finished = True
            self._running -= 1

    def _stop_all(self) -> None:
        for job in list(self._active):
            assert self._batch is not None
            self._batch.drop(job)
            self._fail(job, Cancelled("shutting down"))
        for job in self._pending:
            job.channel.close(Cancelled("shutting down"))

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
            self._inbox.put(_Unload())

    def _unload(self) -> None:
        """Worker thread: a request that came in meanwhile keeps the model."""
        if not self.backend.loaded_models() or self._pending or self._active:
            return
        self.backend.unload()
        self._batch = self._batch_model = None
        self._expires_at = None
        log.info(
            "model %s unloaded after %g s idle (SEGMENT_KEEP_ALIVE); the next request loads it",
            self.backend.name,
            self.keep_alive_s,
        )
