"""The request pipeline every front end uses: HTTP, the command line, the Python API, benchmarks.

    options -> read image (bytes | URL | PIL) -> decode + validate -> worker (generate, parse,
    decode masks) -> place at full resolution -> encode masks (+ overlay) -> SegmentResult

Front ends only parse their input into `SegmentOptions` and render the `SegmentResult`; the
order of the steps and the timings live here.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from PIL import Image

from app.config import Settings
from app.errors import BadInput
from app.runtime.catalog import find_model, installed_paths
from app.runtime.model_ids import accepted_model_ids
from app.runtime.worker import ModelRequest, Worker
from app.steps.fetch import UrlPolicy, fetch_image_bytes
from app.steps.images import DecodedImage, decode_image, to_rgb
from app.steps.masks import MaskFormat, encode_mask
from app.steps.objects import DecodedObject, SegmentedObject, place_object
from app.steps.overlay import overlay_png
from app.steps.prompts import build_prompt, token_budget

log = logging.getLogger("app")


@dataclass(frozen=True)
class SegmentOptions:
    """Everything a caller may ask of one request besides the image."""

    prompt: str  # "cat", "cat ; dog", "detect car"
    mask_format: MaskFormat = "png"
    overlay: bool = False
    max_new_tokens: int | None = None  # capped by SEGMENT_MAX_NEW_TOKENS
    model_id: str | None = None  # must name the served model when given
    include_image: bool = False  # add the upright image as a PNG (SEGMENT_COMPAT=seed)


@dataclass(frozen=True)
class ImageBytes:
    data: bytes  # an encoded image file (PNG, JPEG, ...)


@dataclass(frozen=True)
class ImageUrl:
    url: str  # http(s); fetched under the SSRF policy


ImageSource = ImageBytes | ImageUrl | Image.Image


@dataclass(frozen=True)
class SegmentResult:
    model: str
    prompt: str  # the task prompt the model saw, e.g. "segment cat ; dog"
    width: int  # the image as sent, EXIF orientation applied
    height: int
    text: str  # the model's raw output
    objects: list[SegmentedObject]
    overlay_png: bytes | None
    timings_ms: dict[str, float]
    image_png: bytes | None = None  # the image as sent, upright, when asked for


@dataclass(frozen=True)
class PreparedRequest:
    """A request that passed every check that needs no model."""

    options: SegmentOptions
    task_prompt: str
    max_new_tokens: int
    image: DecodedImage
    started: float  # perf_counter() when the request began
    decoded: float  # ... and when its image was decoded
    model_id: str | None = None  # None: SEGMENT_MODEL


ObjectCallback = Callable[[SegmentedObject], Awaitable[None]]


class Pipeline:
    def __init__(self, settings: Settings, worker: Worker) -> None:
        self.settings = settings
        self.worker = worker
        self.url_policy = UrlPolicy(settings.url_allowlist)

    async def run(
        self,
        source: ImageSource,
        options: SegmentOptions,
        *,
        on_object: ObjectCallback | None = None,
        request_id: str = "-",
    ) -> SegmentResult:
        """One image and prompt through every step; domain errors (`app.errors`) on bad input."""
        prepared = await self.prepare(source, options)
        return await self.execute(prepared, on_object=on_object, request_id=request_id)

    async def prepare(self, source: ImageSource, options: SegmentOptions) -> PreparedRequest:
        """Every check that needs no model: prompt, model_id, token budget, image. A streamed
        answer runs this before its first line, so these errors keep their status codes."""
        started = time.perf_counter()
        task_prompt = build_prompt(options.prompt, max_chars=self.settings.max_prompt_chars)
        model_id = self._model_for(options.model_id)
        limit = self._token_limit(options.max_new_tokens, task_prompt)
        image = await self._decode(source)
        if not (options.overlay or options.include_image):
            image = await asyncio.to_thread(self._model_sized, image)
        return PreparedRequest(
            options, task_prompt, limit, image, started, time.perf_counter(), model_id
        )

    async def execute(
        self,
        prepared: PreparedRequest,
        *,
        on_object: ObjectCallback | None = None,
        request_id: str = "-",
    ) -> SegmentResult:
        """The model, then placement and encoding. With `on_object`, each object is placed as
        soon as the model completes it and handed over in order while generation goes on."""
        image, options = prepared.image, prepared.options
        loop = asyncio.get_running_loop()
        arrivals: asyncio.Queue[DecodedObject] = asyncio.Queue()
        placing: list[asyncio.Future[SegmentedObject]] = []

        def place(obj: DecodedObject) -> asyncio.Future[SegmentedObject]:
            # One thread per object: OpenCV and NumPy release the GIL, so masks place in parallel.
            placing.append(
                asyncio.ensure_future(asyncio.to_thread(self._finish, obj, image, options))
            )
            return placing[-1]

        def arrived(obj: DecodedObject) -> None:  # on the worker thread
            loop.call_soon_threadsafe(arrivals.put_nowait, obj)

        request = ModelRequest(
            image.image, prepared.task_prompt, prepared.max_new_tokens, prepared.model_id
        )
        model = asyncio.ensure_future(self.worker.submit(request, on_object=arrived))
        try:
            # Streaming: place each object while generation goes on and send it at once. Else
            # place them all at the end, in parallel: on a busy CPU, placing meanwhile slows
            # generation more than it saves (tiny model, 2 cores: generate 148 -> 220 ms).
            while on_object is not None:
                arrival = asyncio.ensure_future(arrivals.get())
                await asyncio.wait({arrival, model}, return_when=asyncio.FIRST_COMPLETED)
                if not arrival.done():
                    arrival.cancel()
                    break
                await on_object(await place(arrival.result()))
            output = await model
            inferred = time.perf_counter()
            while not arrivals.empty():
                placed = place(arrivals.get_nowait())
                if on_object is not None:
                    await on_object(await placed)
            objects = list(await asyncio.gather(*placing))
        finally:
            model.cancel()  # a no-op once done; else the worker stops generating for us
            for future in placing:
                future.cancel()
        timings = {
            "decode_image": (prepared.decoded - prepared.started) * 1000,
            "queue_wait": max(
                (inferred - prepared.decoded) * 1000 - sum(output.timings_ms.values()), 0.0
            ),
            **output.timings_ms,
            "masks": (time.perf_counter() - inferred) * 1000,  # what placement adds at the end
        }
        overlay = None
        if options.overlay:
            drawn = time.perf_counter()
            overlay = await asyncio.to_thread(self._overlay, image, objects)
            timings["overlay"] = (time.perf_counter() - drawn) * 1000
        image_png = None
        if options.include_image:
            image_png = await asyncio.to_thread(self._image_png, image)
        timings["total"] = (time.perf_counter() - prepared.started) * 1000
        log.info(
            "request %s prompt_chars=%d image=%dx%d objects=%d %s",
            request_id,
            len(options.prompt),
            image.width,
            image.height,
            len(objects),
            " ".join(f"{k}={v:.1f}ms" for k, v in timings.items()),
        )
        return SegmentResult(
            model=output.model or self.settings.model,
            prompt=prepared.task_prompt,
            width=image.width,
            height=image.height,
            text=output.text,
            objects=objects,
            overlay_png=overlay,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            image_png=image_png,
        )

    def _model_for(self, model_id: str | None) -> str | None:
        """The installed model a request's model_id names (None: SEGMENT_MODEL), else 400."""
        if not model_id or model_id in accepted_model_ids(self.settings.model):
            return None
        installed = find_model(self.settings, model_id)
        if installed is not None:
            return None if installed.id == self.settings.model else installed.id
        names = list(installed_paths(self.settings)) or [self.settings.model]
        raise BadInput(
            f"model_id {model_id!r} is not installed here; installed: {', '.join(names)} (see "
            f"GET /models). `make models SEGMENT_MODEL={model_id}` installs it; omit model_id "
            f"for {self.settings.model!r}."
        )

    def _token_limit(self, requested: int | None, task_prompt: str) -> int:
        """The request's own cap if it set one, else a budget from the classes asked for."""
        if requested:
            return min(requested, self.settings.max_new_tokens)
        return token_budget(
            task_prompt,
            max_objects_per_class=self.settings.max_objects_per_class,
            ceiling=self.settings.max_new_tokens,
        )

    async def _decode(self, source: ImageSource) -> DecodedImage:
        if isinstance(source, Image.Image):  # in-process callers: already decoded
            return DecodedImage(to_rgb(source), source.width, source.height)
        if isinstance(source, ImageUrl):
            data = await fetch_image_bytes(
                source.url,
                policy=self.url_policy,
                max_bytes=self.settings.max_upload_bytes,
                timeout_s=self.settings.url_timeout_s,
                total_timeout_s=self.settings.url_total_timeout_s,
                max_redirects=self.settings.url_max_redirects,
            )
        else:
            data = source.data
        info = self.worker.info
        return await asyncio.to_thread(
            decode_image,
            data,
            max_pixels=self.settings.max_image_pixels,
            draft_to=info.input_size if info is not None and self.settings.jpeg_draft else None,
        )

    def _model_sized(self, image: DecodedImage) -> DecodedImage:
        """Only the model's input size is kept while a request waits (a 12 MP PNG is 36 MB of
        pixels, the model needs 0.6): the same bicubic resize the model side would do, done
        here. Placement needs only the size as sent, which stays."""
        info = self.worker.info
        if info is None or image.image.size == info.input_size:
            return image
        small = image.image.resize(info.input_size, Image.Resampling.BICUBIC)
        return DecodedImage(small, image.width, image.height)

    def _finish(
        self, obj: DecodedObject, image: DecodedImage, options: SegmentOptions
    ) -> SegmentedObject:
        """Full-resolution placement and encoding; numpy/OpenCV only, off the MLX thread."""
        placed = place_object(obj, image.width, image.height)
        if placed.mask is None or options.mask_format == "none":
            return placed
        encoded = encode_mask(placed.mask, options.mask_format, self.settings.png_compression)
        return replace(placed, encoded_mask=encoded)

    def _overlay(self, image: DecodedImage, objects: list[SegmentedObject]) -> bytes:
        return overlay_png(full_size(image), objects, self.settings.png_compression)

    def _image_png(self, image: DecodedImage) -> bytes:
        buffer = io.BytesIO()
        full_size(image).save(buffer, "PNG", compress_level=self.settings.png_compression)
        return buffer.getvalue()


def full_size(image: DecodedImage) -> Image.Image:
    """The image at the size the boxes refer to (a drafted JPEG is scaled back up)."""
    if image.image.size == (image.width, image.height):
        return image.image
    return image.image.resize((image.width, image.height), Image.Resampling.BILINEAR)
