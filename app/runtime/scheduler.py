"""The worker's thread: loads the default model (at start, or on the first request), then runs
continuous batching.

A failed load is never final: the next request tries again, and while idle the thread looks
every `load_retry_s` whether a model that was not installed has appeared, so weights copied in
later are served without a restart.

Jobs arrive in an inbox. Each turn: take what arrived, start waiting jobs in arrival order while
the batch has room (a job for another model than the batch's waits, and so does everything
after it, until the batch has drained: no model swap under a running batch), drop what was
cancelled, and step the batch once. It waits only when there is nothing to step. Every MLX call
of the process happens on this thread (MLX streams are thread-local); what goes back to a
request goes through its channel.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime
from typing import Literal

from app.errors import Cancelled, ServiceError
from app.model.messages import ModelOutput
from app.runtime.backend import Backend, BackendInfo, Keyed, ModelBatch
from app.runtime.jobs import Job, Ledger

log = logging.getLogger(__name__)

State = Literal["loading", "ok", "error"]


class Unload:
    """Inbox message: unload if idle."""


class Stop:
    """Inbox message: end the thread."""


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        ledger: Ledger,
        max_batch: int,
        *,
        preload: bool = True,
        load_retry_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.max_batch = max_batch
        self.preload = preload  # False: the first request loads the model
        self.load_retry_s = load_retry_s  # None: only requests retry a failed load
        self.inbox: queue.SimpleQueue[Job | Unload | Stop] = queue.SimpleQueue()
        self.ready: Future[None] = Future()  # done once the start-up load or check is over
        # What the load found; read by the loop's side for /health.
        self.state: State = "loading"
        self.reason: str | None = "loading the model" if preload else "checking the model"
        # The last failure was the model missing or incomplete (cheap to look at again), as
        # opposed to a load that failed with whole files (only a request retries that).
        self._missing = False
        self.info: BackendInfo | None = None
        self.loaded_at: datetime | None = None
        # This thread's own: the queue in arrival order, the running batch.
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        self._batch: ModelBatch | None = None
        self._batch_model: str | None = None
        self._thread = threading.Thread(target=self._serve, name="mlx-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    # -- the loop ---------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            self._start_up()
        finally:
            self.ready.set_result(None)
        while True:
            idle = not self._active and not self._pending
            try:
                messages = [self.inbox.get(block=idle, timeout=self._retry_timeout(idle))]
            except queue.Empty:
                messages = []
                if idle:  # the retry timeout passed with nothing to do
                    self._look_again()
            while not self.inbox.empty():
                messages.append(self.inbox.get_nowait())
            for message in messages:
                if isinstance(message, Stop):
                    self._stop_all()
                    return
                if isinstance(message, Unload):
                    self._unload()
                else:
                    self._pending.append(message)
            self._admit()
            self._drop_cancelled()
            if self._active:
                self._step()

    def _start_up(self) -> None:
        """Load the default model, or (preload off) only check that it is there to load."""
        started = time.perf_counter()
        try:
            self.info = self.backend.prepare()
            if self.preload:
                self.state, self.reason = "loading", "loading the model"
                self.info = self.backend.load()
                self.loaded_at = datetime.now(UTC)
                log.info(
                    "model %s ready on %s in %.1f s",
                    self.backend.name,
                    self.info.device,
                    time.perf_counter() - started,
                )
            else:
                log.info(
                    "model %s found; it loads on the first request (SEGMENT_PRELOAD=false)",
                    self.backend.name,
                )
            self.state, self.reason = "ok", None
        except Exception as exc:
            self._load_failed(exc)

    def _load_failed(self, exc: BaseException) -> None:
        """The default model could not be checked or loaded: say why; requests retry."""
        reason = getattr(exc, "detail", None) or str(exc) or exc.__class__.__name__
        self._missing = isinstance(exc, FileNotFoundError | ServiceError)
        if (self.state, self.reason) == ("error", reason):
            return  # said already; a retry every load_retry_s must not fill the log
        self.state, self.reason = "error", reason
        if self._missing:  # expected before `make models`, or while a disk is not mounted
            log.warning("model not available (the next request tries again): %s", reason)
        else:
            log.error("model failed to load (the next request tries again)", exc_info=exc)

    def _retry_timeout(self, idle: bool) -> float | None:
        if idle and self.state == "error" and self._missing:
            return self.load_retry_s
        return None

    def _look_again(self) -> None:
        """While idle after a failed start: has the missing model appeared? Cheap when not."""
        if self.state == "error" and self._missing:
            self._start_up()

    def _loaded_for_request(self, model_id: str) -> None:
        """A request's load succeeded: if the default model is usable now, the service is ok."""
        self.loaded_at = datetime.now(UTC)
        if self.state == "ok":
            return
        try:
            self.info = self.backend.prepare()
        except Exception:
            return  # another model loaded; the default one is still missing
        self.state, self.reason = "ok", None
        log.info("model %s loaded for a request after an earlier failure", model_id)

    def _admit(self) -> None:
        """Start waiting jobs in arrival order while the batch has room."""
        while self._pending and len(self._active) < self.max_batch:
            job = self._pending[0]
            model_id = job.request.model_id
            if self._active and model_id != self._batch_model and not job.finished:
                return  # waits for the batch to drain; nothing overtakes it
            self._pending.popleft()
            if not self.ledger.start(job):
                continue  # withdrawn before it started: already counted out
            job.queue_wait_ms = (time.perf_counter() - job.submitted) * 1000
            self._active.append(job)
            try:
                if self._batch is None or model_id != self._batch_model:
                    self._batch = self._batch_model = None  # a failed swap may close it
                    try:
                        self._batch, job.load_ms = self.backend.batch(model_id)
                    except Exception as exc:
                        if model_id == self.backend.name:  # the default model
                            self._load_failed(exc)
                        raise
                    self._batch_model = model_id
                    if job.load_ms is not None:
                        self._loaded_for_request(model_id)
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
        for job, event in events:
            assert isinstance(job, Job)
            if isinstance(event, ModelOutput):
                extra = {"queue_wait": job.queue_wait_ms}
                if job.load_ms is not None:
                    extra = {"load": job.load_ms, **extra}
                job.channel.put(replace(event, timings_ms={**extra, **event.timings_ms}))
                self._finish(job)
                job.channel.close()
            else:
                job.channel.put(event)

    def _fail(self, job: Job, error: BaseException) -> None:
        self._finish(job)
        job.channel.close(error)

    def _finish(self, job: Job) -> None:
        if job in self._active:
            self._active.remove(job)
        self.ledger.finish(job)

    def _stop_all(self) -> None:
        for job in list(self._active):
            assert self._batch is not None
            self._batch.drop(job)
            self._fail(job, Cancelled("shutting down"))
        for job in self._pending:
            job.channel.close(Cancelled("shutting down"))

    def _unload(self) -> None:
        """A request that came in meanwhile keeps the model."""
        if not self.backend.loaded_models() or self._pending or self._active:
            return
        self.backend.unload()
        self._batch = self._batch_model = None
        log.info(
            "model %s unloaded after its keep-alive (SEGMENT_KEEP_ALIVE); the next request "
            "loads it",
            self.backend.name,
        )
