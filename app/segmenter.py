"""The Python API: the service's whole pipeline in your own process.

    from app.segmenter import Segmenter

    with Segmenter.load() as segmenter:  # SEGMENT_* settings, or Segmenter.load(settings)
        result = segmenter.segment("photo.jpg", "cat ; dog")
        for obj in result.objects:
            print(obj.label, obj.box, obj.score, obj.area, obj.mask.shape)  # bool numpy mask

Same steps, limits and errors (`app.errors`) as `POST /segment`. The pipeline is asynchronous,
so the segmenter runs it on an event loop of its own thread: it works the same from a script,
a notebook whose loop is already running, or several threads (requests queue as in the
service).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from PIL import Image

from app.config import Settings, get_settings
from app.errors import NotReady
from app.pipeline import Pipeline, SegmentResult
from app.request import ImageInput, SegmentRequest
from app.runtime.worker import Worker
from app.steps.masks import MaskFormat

T = TypeVar("T")
ImageLike = str | Path | bytes | Image.Image


class Segmenter:
    """One loaded model and its pipeline; `segment` may be called any number of times."""

    def __init__(self, settings: Settings, worker: Worker) -> None:
        self.settings = settings
        self.worker = worker
        self.pipeline = Pipeline(settings, worker)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="segmenter-loop", daemon=True
        )
        self._thread.start()

    @classmethod
    def load(cls, settings: Settings | None = None, *, worker: Worker | None = None) -> Segmenter:
        """Load the model (SEGMENT_* settings by default) and wait until it can serve.

        Raises `app.errors.NotReady` saying why when it cannot (e.g. the model is missing).
        """
        settings = settings or get_settings()
        if worker is None:
            from app.runtime.pool import create_worker  # imports MLX

            # `load` means load now, whatever SEGMENT_PRELOAD says for the service.
            worker = create_worker(settings, preload=True)
        segmenter = cls(settings, worker)
        status = segmenter._call(worker.wait_ready())
        if status.state != "ok":
            segmenter.close()
            raise NotReady(f"The model could not be loaded: {status.reason}")
        return segmenter

    def segment(
        self,
        image: ImageLike,
        prompt: str,
        *,
        mask_format: MaskFormat = "none",
        overlay: bool = False,
        max_new_tokens: int | None = None,
        model_id: str | None = None,
    ) -> SegmentResult:
        """Objects in `image` (a path, encoded bytes, or an upright PIL image) for `prompt`.

        Each object's `mask` is a bool numpy array the size of the image; `mask_format` adds an
        encoded copy (`encoded_mask`) as the service would send it. `model_id` picks another
        installed checkpoint (default SEGMENT_MODEL).
        """
        return self.run(
            SegmentRequest(
                prompt=prompt,
                image=as_image(image),
                mask_format=mask_format,
                overlay=overlay,
                max_new_tokens=max_new_tokens,
                model_id=model_id,
            )
        )

    def run(self, request: SegmentRequest) -> SegmentResult:
        """One request as the service takes it (the CLI builds these)."""
        return self.submit(request).result()

    def submit(self, request: SegmentRequest) -> Future[SegmentResult]:
        """Start one request and return at once: requests in flight together decode in the
        same batch (SEGMENT_MAX_BATCH). Cancelling the future cancels the request."""
        return asyncio.run_coroutine_threadsafe(self.pipeline.run(request), self._loop)

    def close(self) -> None:
        """Stop the worker thread and the event loop (idempotent)."""
        if self._loop.is_closed():
            return
        self._call(self.worker.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()


def as_image(image: ImageLike) -> ImageInput:
    """A path is read (its bytes are decoded exactly as an upload would be)."""
    if isinstance(image, Image.Image | bytes):
        return image
    return Path(image).expanduser().read_bytes()
