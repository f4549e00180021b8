"""A backend without a model: the test queues its replies (outputs, errors, or a hold).

Passed to the real `Worker` through its constructor, as the real backend is, so queueing,
timeouts, cancellation and health run for real (simonw/llm's MockModel pattern).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from fastapi import FastAPI
from PIL import Image

from app.api.app import create_app
from app.config import Settings, keep_alive_seconds
from app.errors import BadInput, Cancelled
from app.model.messages import DecodedObject, ModelEvent, ModelOutput, ModelRequest
from app.runtime.catalog import Checkpoint
from app.runtime.worker import BackendInfo, Worker


@dataclass
class Hold:
    """Keep the worker busy until released or cancelled, as a long generation would; the
    `found` objects are handed out first, as a generation completes objects on its way."""

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


class FakeBackend:
    """`input_sizes`: the checkpoints it pretends to have, by id, and their input sizes (the
    default one alone at 224 px unless told otherwise)."""

    def __init__(self, name: str = "fake/model", input_sizes: dict[str, int] | None = None) -> None:
        self.name = name
        self.input_sizes = input_sizes or {name: 224}
        self.replies: deque[Queued] = deque()
        self.requests: list[ModelRequest] = []
        self.loads = self.unloads = 0

    @property
    def images(self) -> list[Image.Image]:
        return [request.image for request in self.requests]

    def enqueue(self, *replies: Queued) -> None:
        self.replies.extend(replies)

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

    def run(self, request: ModelRequest, cancelled: Callable[[], bool]) -> Iterator[ModelEvent]:
        """Like the real backend: loads first when unloaded, with `load` in the timings."""
        reloaded = not self.loaded_models()
        if reloaded:
            self.load()
        for event in self._reply(request, cancelled):
            if isinstance(event, ModelOutput) and reloaded:
                event = replace(event, timings_ms={"load": 0.1, **event.timings_ms})
            yield event

    def _reply(self, request: ModelRequest, cancelled: Callable[[], bool]) -> Iterator[ModelEvent]:
        self.requests.append(request)
        reply = self.replies.popleft() if self.replies else Reply()
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, Hold):
            yield from reply.found
            reply.started.set()
            while not reply.release.wait(0.01):
                if cancelled():  # the real generation checks this between tokens
                    reply.cancelled.set()
                    raise Cancelled("abandoned")
            yield ModelOutput(text="", timings_ms={}, model=request.model_id)
            return
        yield from reply.objects
        yield ModelOutput(text=reply.text, timings_ms=reply.timings_ms, model=request.model_id)


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
    )
    return FakeService(settings, model, worker)
