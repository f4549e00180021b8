"""An engine without a model: replies are queued by the test (values, errors, or a hold)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from app.config import Settings
from app.engine import Engine, Inference
from app.errors import Cancelled


@dataclass
class Hold:
    """Keep the worker busy until released or cancelled, as a long generation would."""

    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)


Reply = Inference | Exception | Hold


def empty_inference(prompt: str = "segment cat") -> Inference:
    return Inference(
        prompt=prompt,
        text="",
        objects=[],
        raw_masks=np.zeros((0, 64, 64)),
        prompt_tokens=0,
        timings_ms={"generate": 0.0},
    )


class FakeEngine(Engine):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.replies: deque[Reply] = deque()
        self.images: list[Image.Image] = []

    def _load_models(self) -> None:
        self._device = "cpu"

    def _run(
        self, image: Image.Image, prompt: str, max_new_tokens: int, cancel: threading.Event
    ) -> Inference:
        self.images.append(image)
        reply = self.replies.popleft() if self.replies else empty_inference(prompt)
        if isinstance(reply, Hold):
            reply.started.set()
            while not reply.release.wait(0.01):
                if cancel.is_set():  # the real generation checks this between tokens
                    reply.cancelled.set()
                    raise Cancelled("abandoned")
            return empty_inference(prompt)
        if isinstance(reply, Exception):
            raise reply
        return reply
