"""The one MLX thread: admission, a bounded queue, timeouts, cancellation and health state.

MLX streams are thread-local (mlx >= 0.31), so loading, warm-up and every request run on this
worker's single thread; callers await futures and only plain Python/numpy values come back.
The worker runs whatever model side it is given (the real one in `app.runtime.pool`, a fake in
tests)
and imports nothing of MLX itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from PIL import Image

from app.errors import Busy, Cancelled, NotReady, TimedOut
from app.steps.objects import DecodedObject

log = logging.getLogger(__name__)

State = Literal["loading", "ok", "error"]


@dataclass(frozen=True)
class ModelInfo:
    """What the loaded model side reports about itself."""

    device: str  # "gpu" or "cpu"
    input_size: tuple[int, int]  # the model's image input (width, height)
    random_weights: bool


@dataclass(frozen=True)
class ModelRequest:
    image: Image.Image  # upright RGB
    task_prompt: str  # "segment cat ; dog"
    max_new_tokens: int
    model_id: str | None = None  # an installed model; None: SEGMENT_MODEL


@dataclass(frozen=True)
class ModelOutput:
    text: str
    objects: list[DecodedObject]
    timings_ms: dict[str, float]  # (load,) preprocess, vision, generate, decode_masks
    model: str = ""  # the model that answered


class ModelSide(Protocol):
    """Loads, runs one request at a time, unloads; only ever called on the worker thread."""

    name: str

    def load(self) -> ModelInfo: ...

    def unload(self) -> None:
        """Free the model's memory; `run` loads it again when needed."""
        ...

    def loaded_models(self) -> list[str]:
        """The models in memory now."""
        ...

    def run(
        self,
        request: ModelRequest,
        cancelled: Callable[[], bool],
        on_object: Callable[[DecodedObject], None],
    ) -> ModelOutput:
        """`on_object` gets each object as soon as it is complete (on this thread)."""
        ...


@dataclass(frozen=True)
class WorkerStatus:
    state: State
    reason: str | None
    model: str
    info: ModelInfo | None
    loaded_at: datetime | None
    requests_served: int
    waiting: int  # admitted, not started yet
    running: int  # on the MLX thread now (0 or 1)
    loaded: bool  # in memory now; False after an idle unload (the next request loads it)
    expires_at: datetime | None  # when an idle model will be unloaded, if it will


class Worker:
    """`submit` is the only way to the model; everything else is lifecycle and counts."""

    def __init__(
        self,
        model: ModelSide,
        *,
        max_queue: int,
        request_timeout_s: float,
        keep_alive_s: float | None = None,
    ) -> None:
        self.model = model
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.keep_alive_s = keep_alive_s  # None: never unload
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-worker")
        self._state: State = "loading"
        self._reason: str | None = "loading the model"
        self._info: ModelInfo | None = None
        self._loaded_at: datetime | None = None
        self._served = 0
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
            job.cancel.set()

    async def close(self) -> None:
        """Abandon all jobs and release the worker thread."""
        self.abandon_all()
        await asyncio.to_thread(self._thread.shutdown, wait=True, cancel_futures=True)

    @property
    def info(self) -> ModelInfo | None:
        return self._info

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            state=self._state,
            reason=self._reason,
            model=self.model.name,
            info=self._info,
            loaded_at=self._loaded_at,
            requests_served=self._served,
            waiting=self._waiting,
            running=self._running,
            loaded=bool(self.model.loaded_models()),
            expires_at=self._expires_at,
        )

    def _load(self) -> None:
        try:
            started = time.perf_counter()
            self._info = self.model.load()
            self._loaded_at = datetime.now(UTC)
            self._state, self._reason = "ok", None
            log.info(
                "model %s ready on %s in %.1f s",
                self.model.name,
                self._info.device,
                time.perf_counter() - started,
            )
        except FileNotFoundError as exc:  # expected before `make models`: no traceback
            self._state, self._reason = "error", str(exc)
            log.warning("model not available yet (expected until it is installed): %s", exc)
        except Exception as exc:
            self._state, self._reason = "error", str(exc) or exc.__class__.__name__
            log.exception("model failed to load: %s", self._reason)

    # -- requests ----------------------------------------------------------------------------
    def check_admission(self) -> None:
        """Raise what `submit` would raise at once (not ready, queue full), so a streamed
        answer can refuse with a status code before its first line."""
        if self._state != "ok":
            raise NotReady(self._not_ready_detail())
        if self._waiting >= self.max_queue:
            raise Busy(
                f"{self._waiting} requests are already waiting for the model "
                f"(SEGMENT_MAX_QUEUE={self.max_queue}); try again shortly.",
                retry_after_s=2,
            )

    async def submit(
        self,
        request: ModelRequest,
        on_object: Callable[[DecodedObject], None] = lambda obj: None,
    ) -> ModelOutput:
        """Run one request on the worker thread, with a bounded wait and a time limit.

        `on_object` is called on the worker thread as each object completes.
        """
        self.check_admission()
        job = _Job()
        with self._counts:
            self._waiting += 1
        self._jobs.add(job)
        try:
            future = self._thread.submit(self._run, request, job, on_object)
            result = await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=self.request_timeout_s
            )
        except TimeoutError as exc:
            job.cancel.set()
            raise TimedOut(
                f"The request took longer than {self.request_timeout_s:g} s "
                "(SEGMENT_REQUEST_TIMEOUT_S); try a smaller max_new_tokens or fewer classes."
            ) from exc
        except asyncio.CancelledError:  # the client went away: stop generating for it
            job.cancel.set()
            raise
        except Cancelled as exc:
            raise NotReady("The service is shutting down; retry once it is back.") from exc
        finally:
            job.cancel.set()  # a job that never started now never will
            with self._counts:
                if not job.started:
                    self._waiting -= 1
                    job.withdrawn = True
            self._jobs.discard(job)
            self._schedule_unload()
        self._served += 1
        return result

    def _not_ready_detail(self) -> str:
        if self._state == "loading":
            return "The model is still loading; retry in a few seconds (GET /health says when)."
        return f"The model is not available: {self._reason}"

    def _run(
        self, request: ModelRequest, job: _Job, on_object: Callable[[DecodedObject], None]
    ) -> ModelOutput:
        with self._counts:
            if job.withdrawn or job.cancel.is_set():
                raise Cancelled("abandoned before it started")
            job.started = True
            self._waiting -= 1
            self._running += 1
        try:
            before = set(self.model.loaded_models())
            output = self.model.run(request, job.cancel.is_set, on_object)
            if set(self.model.loaded_models()) - before:  # loaded (again) for this request
                self._loaded_at = datetime.now(UTC)
            return output
        finally:
            with self._counts:
                self._running -= 1

    # -- keep-alive --------------------------------------------------------------------------
    def _schedule_unload(self) -> None:
        """On the event loop: once nothing waits or runs, unload after SEGMENT_KEEP_ALIVE."""
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None
        self._expires_at = None
        if self.keep_alive_s is None or self._state != "ok" or self._waiting or self._running:
            return
        loop = asyncio.get_running_loop()
        self._expires_at = datetime.now(UTC) + timedelta(seconds=self.keep_alive_s)
        self._unload_timer = loop.call_later(self.keep_alive_s, self._unload_when_idle)

    def _unload_when_idle(self) -> None:
        self._unload_timer = None
        if self._state == "ok" and not (self._waiting or self._running):
            self._thread.submit(self._unload)

    def _unload(self) -> None:
        """Worker thread: a request that came in meanwhile keeps the model."""
        if not self.model.loaded_models() or self._waiting or self._running:
            return
        self.model.unload()
        self._expires_at = None
        log.info(
            "model %s unloaded after %g s idle (SEGMENT_KEEP_ALIVE); the next request loads it",
            self.model.name,
            self.keep_alive_s,
        )


@dataclass(eq=False)
class _Job:
    """One admitted request: counted as waiting until the worker thread starts it."""

    cancel: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    withdrawn: bool = False  # its caller left before it started
