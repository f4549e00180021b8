"""The request pipeline every face uses: HTTP (plain and streamed), the CLI, the Python API.

    SegmentRequest -> prompt, checkpoint, token budget, image (decoded at the model's size)
      -> worker (generate, parse, decode masks: one stream of objects, then a record)
      -> place each object at full resolution and encode its mask -> overlay -> SegmentResult

`start` runs every check that needs no model and returns the request's events: each
`SegmentedObject`, then one `SegmentResult`. The plain answer collects them (`run`), a streamed
answer forwards them as they come; closing the stream cancels the generation. Front ends only
build the request and render what comes out; the order of the steps and the timings live here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, replace

from PIL import Image

from app.config import Settings
from app.errors import BadInput
from app.model.messages import DecodedObject, ModelEvent, ModelOutput, ModelRequest
from app.request import SegmentRequest
from app.runtime.catalog import Checkpoint
from app.runtime.worker import ModelStream, Worker
from app.steps.fetch import UrlPolicy, fetch_image_bytes
from app.steps.images import check_size, decode_image, release_big_images_promptly, to_rgb
from app.steps.masks import encode_mask
from app.steps.objects import SegmentedObject, place_object
from app.steps.overlay import overlay_png
from app.steps.prompts import build_prompt, check_token_cap, split_task_prompt, token_budget
from app.steps.seed import image_png, seed_object

log = logging.getLogger("app")


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
    tokens: dict[str, int]  # prompt (image tokens included), generated; per_class: summed
    # SEGMENT_COMPAT=seed: the model's input image (input_size square), which each object's
    # `seed.coordinates` refer to, as the old service answered it
    model_image_png: bytes | None = None


ResultEvent = SegmentedObject | SegmentResult


@dataclass(frozen=True)
class _Prepared:
    """A request that passed every check that needs no model. While it waits it holds the
    model-size image only, plus, when a picture must be drawn, the file it came in."""

    request: SegmentRequest
    task_prompt: str
    checkpoint: Checkpoint
    model_image: Image.Image  # upright RGB at the checkpoint's input size
    width: int  # the image as sent, EXIF orientation applied: boxes and masks use this size
    height: int
    original: bytes | Image.Image | None  # for the overlay, decoded in full later
    started: float  # perf_counter() when the request began
    decoded: float  # ... and when its image was decoded


class Pipeline:
    def __init__(self, settings: Settings, worker: Worker) -> None:
        self.settings = settings
        self.worker = worker
        self.url_policy = UrlPolicy(settings.url_allowlist)
        # Bounds the memory bursts of big images take: see SEGMENT_IMAGE_WORKERS.
        self._image_work = asyncio.Semaphore(settings.image_workers)
        release_big_images_promptly()

    async def run(self, request: SegmentRequest, *, request_id: str = "-") -> SegmentResult:
        """The whole answer at once."""
        return await collect(await self.start(request, request_id=request_id))

    async def start(
        self, request: SegmentRequest, *, request_id: str = "-"
    ) -> AsyncGenerator[ResultEvent, None]:
        """Every check that needs no model, then admission: errors raised here come before any
        answer, so a streamed request keeps their status codes. Returns the events (iterate
        them to the end, or close them to cancel)."""
        prepared = await self._prepare(request)
        self.worker.check_admission()
        return self._events(prepared, request_id)

    async def _prepare(self, request: SegmentRequest) -> _Prepared:
        started = time.perf_counter()
        task_prompt = build_prompt(request.prompt, max_chars=self.settings.max_prompt_chars)
        check_token_cap(task_prompt, request.max_new_tokens)
        checkpoint = await asyncio.to_thread(self.worker.backend.checkpoint, request.model_id)
        size = checkpoint.input_size
        assert size is not None  # resolve() refuses a checkpoint without one
        data = await self._image_bytes(request)
        async with self._image_work:
            width, height, model_image = await asyncio.to_thread(self._decode, data, size)
        return _Prepared(
            request=request.model_copy(update={"image": None}),  # its pixels live on below
            task_prompt=task_prompt,
            checkpoint=checkpoint,
            model_image=model_image,
            width=width,
            height=height,
            original=data if request.overlay else None,
            started=started,
            decoded=time.perf_counter(),
        )

    async def _events(
        self, prepared: _Prepared, request_id: str
    ) -> AsyncGenerator[ResultEvent, None]:
        """Streamed answers place each object as soon as the model completes it; others place
        them all at the end, in parallel: on a busy CPU, placing meanwhile slows generation
        more than it saves (tiny model, 2 cores: generate 148 -> 220 ms)."""
        streamed = prepared.request.stream
        objects: list[tuple[int, SegmentedObject]] = []  # (sequence, object) as they come
        decoded: list[tuple[int, DecodedObject]] = []
        outputs: dict[int, ModelOutput] = {}
        async with AsyncExitStack() as streams:
            submitted = [
                await streams.enter_async_context(self.worker.submit(model_request))
                for model_request in self._model_requests(prepared)
            ]
            async with aclosing(merged(submitted)) as events:
                async for index, event in events:
                    if isinstance(event, ModelOutput):
                        outputs[index] = event
                    elif streamed:
                        async with self._image_work:
                            placed = await asyncio.to_thread(self._finish, event, prepared)
                        objects.append((index, placed))
                        yield placed
                    else:
                        decoded.append((index, event))
        assert len(outputs) == len(submitted), "every sequence ends with its output"
        inferred = time.perf_counter()
        if not streamed:
            # One thread per object: OpenCV and NumPy release the GIL, so masks place in parallel.
            async with self._image_work:
                placing = (asyncio.to_thread(self._finish, obj, prepared) for _, obj in decoded)
                placed_all = await asyncio.gather(*placing)
            objects = [(index, obj) for (index, _), obj in zip(decoded, placed_all, strict=True)]
            for _, placed in objects:
                yield placed
        ordered = [obj for _, obj in sorted(objects, key=lambda pair: pair[0])]  # class order
        output = combined([outputs[index] for index in sorted(outputs)])
        timings = {
            "decode_image": (prepared.decoded - prepared.started) * 1000,
            **output.timings_ms,  # (load,) queue_wait, preprocess, vision, prefill, generate, ...
            "masks": (time.perf_counter() - inferred) * 1000,  # what placement adds at the end
        }
        overlay = model_image_png = None
        if prepared.original is not None:
            drawn = time.perf_counter()
            async with self._image_work:
                overlay = await asyncio.to_thread(self._overlay, prepared, ordered)
            timings["overlay"] = (time.perf_counter() - drawn) * 1000
        if self.settings.compat == "seed":  # a small square: a few ms
            model_image_png = await asyncio.to_thread(
                image_png, prepared.model_image, self._compression
            )
        timings["total"] = (time.perf_counter() - prepared.started) * 1000
        log.info(
            "request %s prompt_chars=%d image=%dx%d objects=%d %s",
            request_id,
            len(prepared.request.prompt),
            prepared.width,
            prepared.height,
            len(ordered),
            " ".join(f"{k}={v:.1f}ms" for k, v in timings.items()),
        )
        yield SegmentResult(
            model=output.model,
            prompt=prepared.task_prompt,
            width=prepared.width,
            height=prepared.height,
            text=output.text,
            objects=ordered,
            overlay_png=overlay,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
            tokens=output.tokens,
            model_image_png=model_image_png,
        )

    def _model_requests(self, prepared: _Prepared) -> list[ModelRequest]:
        """One sequence for the prompt; or, with per_class, one per class of it, which the
        worker decodes together (each with its own prefill; the image's features are computed
        once and cached)."""
        task, classes = split_task_prompt(prepared.task_prompt)
        prompts = [f"{task} {name}" for name in classes] if prepared.request.per_class else []
        return [
            ModelRequest(
                prepared.model_image,
                prompt,
                self._token_limit(prepared.request.max_new_tokens, prompt),
                prepared.checkpoint.id,
            )
            for prompt in prompts or [prepared.task_prompt]
        ]

    def _token_limit(self, requested: int | None, task_prompt: str) -> int:
        """The request's own cap if it set one, else a budget from the classes asked for."""
        if requested:
            return min(requested, self.settings.max_new_tokens)
        return token_budget(
            task_prompt,
            max_objects_per_class=self.settings.max_objects_per_class,
            ceiling=self.settings.max_new_tokens,
        )

    async def _image_bytes(self, request: SegmentRequest) -> bytes | Image.Image:
        """The request's image: given, or fetched from its URL under the SSRF policy."""
        if (request.image is None) == (request.image_url is None):
            raise BadInput("Send exactly one image: the file itself, or an image_url.")
        if request.image is not None:
            return request.image
        assert request.image_url is not None
        return await fetch_image_bytes(
            request.image_url,
            policy=self.url_policy,
            max_bytes=self.settings.max_upload_bytes,
            timeout_s=self.settings.url_timeout_s,
            total_timeout_s=self.settings.url_total_timeout_s,
            max_redirects=self.settings.url_max_redirects,
        )

    def _decode(self, data: bytes | Image.Image, size: int) -> tuple[int, int, Image.Image]:
        """Width and height as sent, and the model's copy. Only the model's copy is kept while
        the request waits (a 12 MP PNG is 36 MB of pixels, the model needs 0.6), and only it
        may come from a fast reduced-scale JPEG decode. An in-process caller's image is taken
        as it is (upright), within the same limits as a file."""
        if isinstance(data, Image.Image):
            check_size(*data.size, max_pixels=self.settings.max_image_pixels)
            return *data.size, _model_sized(to_rgb(data), size)
        draft = (size, size) if self.settings.jpeg_draft else None
        image = decode_image(data, max_pixels=self.settings.max_image_pixels, draft_to=draft)
        return image.width, image.height, _model_sized(image.image, size)

    def _finish(self, obj: DecodedObject, prepared: _Prepared) -> SegmentedObject:
        """Full-resolution placement and encoding; numpy/OpenCV only, off the MLX thread.
        With SEGMENT_COMPAT=seed the decoder's own 64x64 map also goes on, in the old form."""
        placed = place_object(obj, prepared.width, prepared.height)
        if self.settings.compat == "seed" and obj.raw_mask is not None:
            size = prepared.checkpoint.input_size
            assert size is not None  # resolve() refuses a checkpoint without one
            seed = seed_object(obj.raw_mask, obj.loc, size, self._compression)
            placed = replace(placed, seed=seed)
        fmt = prepared.request.mask_format
        if placed.mask is None or fmt == "none":
            return placed
        return replace(placed, encoded_mask=encode_mask(placed.mask, fmt, self._compression))

    @property
    def _compression(self) -> int:
        return self.settings.png_compression

    def _overlay(self, prepared: _Prepared, objects: list[SegmentedObject]) -> bytes:
        """The overlay, drawn on the image decoded at full resolution: people look at it, so
        no reduced-scale decode."""
        original = prepared.original
        if isinstance(original, Image.Image):
            full = to_rgb(original)
        else:
            assert original is not None
            full = decode_image(original, max_pixels=self.settings.max_image_pixels).image
        return overlay_png(full, objects, self._compression)


async def merged(streams: list[ModelStream]) -> AsyncGenerator[tuple[int, ModelEvent], None]:
    """The events of several model streams as they come, each tagged with its stream's index.
    One task per stream reads it; closing this ends them all (none is left behind)."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    arrivals: asyncio.Queue[tuple[int, ModelEvent | BaseException | None]] = asyncio.Queue()

    async def read(index: int, stream: ModelStream) -> None:
        try:
            async for event in stream:
                arrivals.put_nowait((index, event))
        except Exception as exc:  # reported by the reader below
            arrivals.put_nowait((index, exc))
        else:
            arrivals.put_nowait((index, None))

    readers = [asyncio.ensure_future(read(index, s)) for index, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            index, item = await arrivals.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


def combined(outputs: list[ModelOutput]) -> ModelOutput:
    """Several sequences' records as one: their texts joined as PaliGemma joins objects, the
    work each did added up, the waits (which overlap) as long as the longest."""
    if len(outputs) == 1:
        return outputs[0]
    overlapping = ("load", "queue_wait", "generate")
    timings: dict[str, float] = {}
    for output in outputs:
        for name, ms in output.timings_ms.items():
            if name not in timings:
                timings[name] = ms
            elif name in overlapping:
                timings[name] = max(timings[name], ms)
            else:
                timings[name] += ms
    tokens: dict[str, int] = {}
    for output in outputs:  # work done: each sequence read its own prompt, wrote its own text
        for name, count in output.tokens.items():
            tokens[name] = tokens.get(name, 0) + count
    text = " ; ".join(output.text for output in outputs if output.text)
    return ModelOutput(text=text, timings_ms=timings, model=outputs[0].model, tokens=tokens)


async def collect(events: AsyncGenerator[ResultEvent, None]) -> SegmentResult:
    """A request's events read to the end: its result."""
    async with aclosing(events):
        async for event in events:
            if isinstance(event, SegmentResult):
                return event
    raise RuntimeError("the pipeline's events ended without a result")


def _model_sized(image: Image.Image, size: int) -> Image.Image:
    """The checkpoint's input: the same bicubic resize its processor would do, done here."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC)
