"""The worker: the one MLX thread behind every request, seen from the event loop.

Admission (not ready, queue full), the time limit, cancellation, the counts and state /health
shows, and the idle unload (SEGMENT_KEEP_ALIVE) live here; the thread itself, which loads the
model and runs continuous batching, is app.runtime.scheduler. A request's results come back as
one async stream of events (each object as it completes, then one `ModelOutput`) through its
`Channel`; closing the stream cancels the request. The worker runs whatever backend it is given
(the checkpoints of app.runtime.pool, or a fake in tests) and imports nothing of MLX itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.errors import Busy, Cancelled, NotReady, TimedOut
from app.model.messages import ModelEvent, ModelOutput, ModelRequest
from app.runtime.backend import Backend, BackendInfo
from app.runtime.channel import Channel
from app.runtime.jobs import Job, Ledger
from app.runtime.scheduler import Scheduler, State, Stop, Unload

log = logging.getLogger(__name__)


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


class ModelStream:
    """One request's events, as an async iterator; `aclose` (or leaving `async with`) cancels
    it, and the time limit ends it with a 504. Always close it: `async with worker.submit(...)`.
    """

    def __init__(self, worker: Worker, job: Job, deadline: float) -> None:
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
        preload: bool = True,
        load_retry_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.keep_alive_s = keep_alive_s  # None: never unload
        self.served = 0
        self._ledger = Ledger()
        self._scheduler = Scheduler(
            backend, self._ledger, max_batch, preload=preload, load_retry_s=load_retry_s
        )
        self._started = False
        self._closing = False
        self._jobs: set[Job] = set()  # admitted and not yet withdrawn (the loop's view)
        self._expires_at: datetime | None = None
        self._unload_timer: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Future[None]:
        """Start the thread, which loads first; returns at once so /health can answer 503
        meanwhile. The future is done once the load succeeded or failed."""
        if not self._started:
            self._started = True
            self._scheduler.start()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: nobody to time the idle unload
                return self._scheduler.ready
            self._scheduler.ready.add_done_callback(
                lambda _: loop.call_soon_threadsafe(self._schedule_unload)
            )
        return self._scheduler.ready

    async def wait_ready(self) -> WorkerStatus:
        """Wait for the load to finish (successfully or not) and report how it went."""
        await asyncio.wrap_future(self.start())
        return self.status()

    def abandon_all(self) -> None:
        """Stop taking work; queued and running jobs stop between tokens and answer 503.

        Called when a graceful shutdown's drain time is up, while their requests can still
        be answered, and again by `close`.
        """
        self._closing = True
        if self._unload_timer is not None:
            self._unload_timer.cancel()
        for job in list(self._jobs):
            job.channel.cancelled.set()
            if self._ledger.withdraw(job):  # it will never start: its reader hears so now
                job.channel.close(Cancelled("abandoned before it started"))

    async def close(self) -> None:
        """Abandon all jobs and end the worker thread."""
        self.abandon_all()
        if self._started:
            self._scheduler.inbox.put(Stop())
            await asyncio.to_thread(self._scheduler.join)

    def status(self) -> WorkerStatus:
        scheduler = self._scheduler
        state, reason = scheduler.state, scheduler.reason
        if self._closing:
            state, reason = "error", "shutting down"
        return WorkerStatus(
            state=state,
            reason=reason,
            model=self.backend.name,
            info=scheduler.info,
            loaded_at=scheduler.loaded_at,
            requests_served=self.served,
            waiting=self._ledger.waiting,
            running=self._ledger.running,
            loaded=bool(self.backend.loaded_models()),
            expires_at=self._expires_at,
            largest_batch=self._ledger.largest_batch,
        )

    # -- requests ----------------------------------------------------------------------------
    def check_admission(self) -> None:
        """Raise what `submit` would raise at once (not ready, queue full)."""
        status = self.status()
        if status.state == "loading" or self._closing:
            raise NotReady(self._not_ready_detail(status))
        # After a failed load a request is let through: the worker tries the load again (the
        # pipeline has already refused, cheaply, a model that is missing or incomplete).
        if status.waiting >= self.max_queue:
            raise Busy(
                f"{status.waiting} requests are already waiting for the model "
                f"(SEGMENT_MAX_QUEUE={self.max_queue}); try again shortly.",
                retry_after_s=2,
            )

    def submit(self, request: ModelRequest) -> ModelStream:
        """Admit one request and queue it for the worker thread; its events come back as a
        stream, within SEGMENT_REQUEST_TIMEOUT_S of now (queue wait included)."""
        self.check_admission()
        job = Job(request, Channel(), submitted=time.perf_counter())
        self._ledger.admit(job)
        self._jobs.add(job)
        self._cancel_unload()
        self._scheduler.inbox.put(job)
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        return ModelStream(self, job, deadline)

    def withdraw(self, job: Job) -> None:
        """On the loop: the job's caller is done with it (finished, failed or gone)."""
        job.channel.cancelled.set()
        self._ledger.withdraw(job)
        if job in self._jobs:
            self._jobs.discard(job)
            self._schedule_unload()

    @staticmethod
    def _not_ready_detail(status: WorkerStatus) -> str:
        if status.state == "loading":
            return "The model is still loading; retry in a few seconds (GET /health says when)."
        return f"The model is not available: {status.reason}"

    # -- keep-alive --------------------------------------------------------------------------
    def _cancel_unload(self) -> None:
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None
        self._expires_at = None

    def _schedule_unload(self) -> None:
        """On the event loop: once nothing waits or runs, unload after SEGMENT_KEEP_ALIVE."""
        self._cancel_unload()
        if self.keep_alive_s is None or self.status().state != "ok" or self._jobs:
            return
        if not self.backend.loaded_models():  # not loaded yet (SEGMENT_PRELOAD=false)
            return
        loop = asyncio.get_running_loop()
        self._expires_at = datetime.now(UTC) + timedelta(seconds=self.keep_alive_s)
        self._unload_timer = loop.call_later(self.keep_alive_s, self._unload_when_idle)

    def _unload_when_idle(self) -> None:
        self._unload_timer = None
        if self.status().state == "ok" and not self._jobs:
            self._expires_at = None
            self._scheduler.inbox.put(Unload())
