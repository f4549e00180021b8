"""Requests admitted to the worker, and the counts of those waiting and running.

The event loop admits and withdraws jobs, the worker thread starts and finishes them: every
move is made under one lock, and each job is counted out exactly once, whichever side gets
there first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from app.model.messages import ModelEvent, ModelRequest
from app.runtime.channel import Channel


@dataclass(eq=False)
class Job:
    """One admitted request: waiting until the worker thread starts it."""

    request: ModelRequest
    channel: Channel[ModelEvent]
    submitted: float  # perf_counter() when admitted
    started: bool = False
    finished: bool = False  # counted out of waiting/running
    queue_wait_ms: float = 0.0
    load_ms: float | None = None  # the model was loaded for this request


class Ledger:
    """Who waits and who runs, for /health and the queue limit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0  # admitted, not started yet
        self.running = 0  # in the batch now
        self.largest_batch = 0  # the most that have run together

    def admit(self, job: Job) -> None:
        with self._lock:
            self.waiting += 1

    def start(self, job: Job) -> bool:
        """Worker thread: the job enters the batch; False if it was withdrawn meanwhile."""
        with self._lock:
            if job.finished:
                return False
            job.started = True
            self.waiting -= 1
            self.running += 1
            self.largest_batch = max(self.largest_batch, self.running)
            return True

    def withdraw(self, job: Job) -> bool:
        """Its caller is done with it: True if it was still waiting (it never will start)."""
        with self._lock:
            if job.started or job.finished:
                return False
            job.finished = True
            self.waiting -= 1
            return True

    def finish(self, job: Job) -> None:
        """Worker thread: a started job is over."""
        with self._lock:
            if job.started and not job.finished:
                job.finished = True
                self.running -= 1
