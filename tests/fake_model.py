"""A model side without a model: the test queues its replies (outputs, errors, or a hold).

Passed to the real `Worker` through its constructor, as the real model side is, so queueing,
timeouts, cancellation and health run for real (simonw/llm's MockModel pattern).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fastapi import FastAPI
from PIL import Image

from app.api.app import create_app
from app.config import Settings
from app.errors import Cancelled
from app.keep_alive import keep_alive_seconds
from app.runtime.worker import ModelInfo, ModelOutput, ModelRequest, Worker
from app.steps.objects import DecodedObject


@dataclass
class Hold:
    """Keep the worker busy until released or cancelled, as a long generation would; the
    `found` objects are handed out first, as a generation completes objects on its way."""

    found: list[DecodedObject] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)


Reply = ModelOutput | Exception | Hold


def empty_output() -> ModelOutput:
    return ModelOutput(text="", objects=[], timings_ms={"generate": 0.0})


class FakeModel:
    def __init__(self, name: str = "fake/model") -> None:
        self.name = name
        self.replies: deque[Reply] = deque()
        self.images: list[Image.Image] = []
        self.loads = self.unloads = 0

    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def load(self) -> ModelInfo:
        self.loads += 1
        return ModelInfo(device="cpu", input_size=(224, 224), random_weights=False)

    def unload(self) -> None:
        self.unloads += 1

    def loaded_models(self) -> list[str]:
        return [self.name] if self.loads > self.unloads else []

    def run(
        self,
        request: ModelRequest,
        cancelled: Callable[[], bool],
        on_object: Callable[[DecodedObject], None],
    ) -> ModelOutput:
        """Like the real model side: loads first when unloaded, with `load` in the timings."""
        reloaded = not self.loaded_models()
        if reloaded:
            self.load()
        output = self._reply(request, cancelled, on_object)
        if reloaded:
            return replace(output, timings_ms={"load": 0.1, **output.timings_ms})
        return output

    def _reply(
        self,
        request: ModelRequest,
        cancelled: Callable[[], bool],
        on_object: Callable[[DecodedObject], None],
    ) -> ModelOutput:
        self.images.append(request.image)
        reply = self.replies.popleft() if self.replies else empty_output()
        if isinstance(reply, Hold):
            for obj in reply.found:
                on_object(obj)
            reply.started.set()
            while not reply.release.wait(0.01):
                if cancelled():  # the real generation checks this between tokens
                    reply.cancelled.set()
                    raise Cancelled("abandoned")
            return ModelOutput(text="", objects=reply.found, timings_ms={})
        if isinstance(reply, Exception):
            raise reply
        for obj in reply.objects:
            on_object(obj)
        return reply


@dataclass
class FakeService:
    """Settings, the fake model side and the real worker around it."""

    settings: Settings
    model: FakeModel
    worker: Worker

    def app(self) -> FastAPI:
        return create_app(self.settings, self.worker)


def fake_service(settings: Settings) -> FakeService:
    model = FakeModel(settings.model)
    worker = Worker(
        model,
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        keep_alive_s=keep_alive_seconds(settings.keep_alive),
    )
    return FakeService(settings, model, worker)
