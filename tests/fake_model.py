"""A backend without a model: the test queues its replies (outputs, errors, or a hold).

Passed to the real `Worker` through its constructor, as the real backend is, so queueing,
batching, timeouts, cancellation and health run for real (simonw/llm's MockModel pattern).
A reply's objects come out one per step of the batch, then its output, as a generation
completes objects on its way.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from PIL import Image

from app.api.app import create_app
from app.config import Settings, keep_alive_seconds
from app.errors import BadInput
from app.model.messages import DecodedObject, ModelEvent, ModelOutput, ModelRequest
from app.runtime.backend import BackendInfo, Keyed
from app.runtime.catalog import Checkpoint
from app.runtime.worker import Worker


@dataclass
class Hold:
    """Keep its place in the batch until released or dropped, as a long generation would; the
    `found` objects are handed out first."""

    found: list[DecodedObject] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Reply:
    """What one request answers: its objects, then its text and timings."""

    objects: list[DecodedObject] = field(default_factory=list)
    text: str = ""
    timings_ms: dict[str, float] = field(default_factory=lambda: {"generate": 0.0})


Queued = Reply | Exception | Hold


@dataclass(eq=False)
class _Running:
    request: ModelRequest
    reply: Reply | Hold
    left: deque[DecodedObject]


class FakeBatch:
    """The running batch of the fake model: each step hands every request its next object."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.running: dict[Hashable, _Running] = {}
        self.largest = 0  # the most requests that ever ran together

    @property
    def active(self) -> int:
        return len(self.running)

    def start(self, key: Hashable, request: ModelRequest) -> list[Keyed]:
        self.backend.requests.append(request)
        backend = self.backend
        reply = backend.replies.popleft() if backend.replies else Reply()
        if isinstance(reply, Exception):
            raise reply
        found = reply.found if isinstance(reply, Hold) else reply.objects
        self.running[key] = _Running(request, reply, deque(found))
        self.largest = max(self.largest, len(self.running))
        if isinstance(reply, Hold):
            reply.started.set()
        return []

    def step(self) -> list[Keyed]:
        events: list[Keyed] = []
        for key, run in list(self.running.items()):
            if run.left:
                events.append((key, run.left.popleft()))
                continue
            if isinstance(run.reply, Hold) and not run.reply.release.is_set():
                continue
            events.append((key, self._output(run)))
            del self.running[key]
        if not events:
            threading.Event().wait(0.005)  # a step takes time: no busy spin while holding
        return events

    def drop(self, key: Hashable) -> None:
        run = self.running.pop(key)
        if isinstance(run.reply, Hold):
            run.reply.cancelled.set()

    @staticmethod
    def _output(run: _Running) -> ModelEvent:
        model = run.request.model_id
        if isinstance(run.reply, Hold):
            return ModelOutput(text="", timings_ms={}, model=model)
        return ModelOutput(text=run.reply.text, timings_ms=run.reply.timings_ms, model=model)


class FakeBackend:
    """`input_sizes`: the checkpoints it pretends to have, by id, and their input sizes (the
    default one alone at 224 px unless told otherwise)."""

    def __init__(self, name: str = "fake/model", input_sizes: dict[str, int] | None = None) -> None:
        self.name = name
        self.input_sizes = input_sizes or {name: 224}
        self.replies: deque[Queued] = deque()
        self.requests: list[ModelRequest] = []
        self.loads = self.unloads = 0
        self.fake_batch = FakeBatch(self)

    @property
    def images(self) -> list[Image.Image]:
        return [request.image for request in self.requests]

    def enqueue(self, *replies: Queued) -> None:
        self.replies.extend(replies)

    def prepare(self) -> BackendInfo:
        return BackendInfo(device="cpu", random_weights=False)

    def load(self) -> BackendInfo:
        self.loads += 1
        return BackendInfo(device="cpu", random_weights=False)

    def unload(self) -> None:
        self.unloads += 1

    def loaded_models(self) -> list[str]:
        return [self.name] if self.loads > self.unloads else []

    def checkpoint(self, model_id: str | None) -> Checkpoint:
        name = model_id or self.name
        if name not in self.input_sizes:
            raise BadInput(f"model_id {name!r} is not installed here; installed: {self.name}")
        size = self.input_sizes[name]
        return Checkpoint(name, Path(name), size, None, 0, random_weights=False)

    def batch(self, model_id: str) -> tuple[FakeBatch, float | None]:
        """Like the real backend: loads first when unloaded, and says how long that took."""
        if self.loaded_models():
            return self.fake_batch, None
        self.load()
        return self.fake_batch, 0.1


@dataclass
class FakeService:
    """Settings, the fake backend and the real worker around it."""

    settings: Settings
    model: FakeBackend
    worker: Worker

    def app(self) -> FastAPI:
        return create_app(self.settings, self.worker)


def fake_service(settings: Settings, input_sizes: dict[str, int] | None = None) -> FakeService:
    model = FakeBackend(settings.model, input_sizes)
    worker = Worker(
        model,
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        keep_alive_s=keep_alive_seconds(settings.keep_alive),
        max_batch=settings.max_batch,
        preload=settings.preload,
        load_retry_s=settings.load_retry_s,
    )
    return FakeService(settings, model, worker)
