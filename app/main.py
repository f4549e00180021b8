"""HTTP layer: routes, lifespan, and the one place errors become JSON. No model logic here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, TypeVar

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from app.body_limit import BodyLimit
from app.config import Settings, get_settings
from app.engine import Engine
from app.errors import BadInput, ClientGone, TooLarge
from app.fetch import UrlPolicy, fetch_image_bytes
from app.http_errors import RequestId, install_error_handlers
from app.images import decode_image
from app.masks import MaskFormat, encode_mask
from app.prompts import build_prompt, token_budget
from app.schemas import ErrorResponse, HealthResponse, SegmentObject, SegmentResponse
from app.security import AccessGuard, host_name, is_loopback
from app.segmentation import pair_masks, place_object
from app.tokens import ParsedObject

log = logging.getLogger("app")

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 415, 422, 500, 503, 504)}
# The whole body may carry one maximal image plus multipart boundaries and small text fields.
FORM_OVERHEAD_BYTES = 64 * 1024
DISCONNECT_POLL_S = 0.25
T = TypeVar("T")


def _version() -> str:
    try:
        return version("paligemma-segment")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0+local"


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The service. Tests pass their own settings and engine; `python -m app` uses the defaults."""
    settings = settings or get_settings()
    engine = engine or Engine(settings)
    url_policy = UrlPolicy(settings.url_allowlist)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not is_loopback(host_name(settings.host)) and settings.api_token is None:
            log.warning(
                "listening on %s without SEGMENT_API_TOKEN: anyone who can reach this address "
                "can use the service",
                settings.host,
            )
        engine.start()  # load in the background: /health answers 503 "loading" meanwhile
        yield
        await engine.close()

    app = FastAPI(
        title="PaliGemma segmentation",
        version=_version(),
        summary="Text-prompted segmentation with PaliGemma 2 mix on MLX, served locally.",
        lifespan=lifespan,
    )
    install_error_handlers(app, settings)
    # Added last = runs first: CORS answers preflights, every request gets an id, the guard
    # refuses strangers, then the body limit counts bytes as they stream in (before the
    # multipart parser spools them).
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(AccessGuard, settings=settings)
    app.add_middleware(RequestId)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health() -> JSONResponse:
        """200 once the model is loaded and warm; 503 with `status` loading/error and the reason."""
        status = engine.status()
        body = HealthResponse(
            status=status.state,
            model=status.model,
            device=status.device,
            reason=status.reason,
            loaded_at=status.loaded_at,
            requests_served=status.requests_served,
            queued=status.queued,
            random_weights=status.random_weights,
            version=app.version,
        )
        code = 200 if status.state == "ok" else 503
        headers = {} if code == 200 else {"Retry-After": "5"}
        return JSONResponse(body.model_dump(mode="json"), status_code=code, headers=headers)

    @app.post("/segment", response_model=SegmentResponse, responses=ERRORS)  # type: ignore[arg-type]
    async def segment(
        request: Request,
        prompt: Annotated[
            str, Form(min_length=1, description="What to find: 'cat', 'cat ; dog', 'detect car'.")
        ],
        image_file: Annotated[UploadFile | None, File(description="The image to segment.")] = None,
        image_url: Annotated[str | None, Form(description="Or an http(s) URL of it.")] = None,
        model_id: Annotated[str | None, Form(description="Must name the loaded model.")] = None,
        mask_format: Annotated[MaskFormat, Form(description="png, rle, polygon or none.")] = "png",
        max_new_tokens: Annotated[
            int | None, Form(ge=1, description="Cap on generated tokens (~24 per object).")
        ] = None,
    ) -> SegmentResponse:
        """Segment (or `detect`) the prompt's classes in one image: boxes, masks, labels, scores."""
        started = time.perf_counter()
        task_prompt = build_prompt(prompt, max_chars=settings.max_prompt_chars)
        if model_id not in (None, "", settings.model):
            raise BadInput(
                f"model_id {model_id!r} is not served here; this service runs "
                f"{settings.model!r} (omit model_id to use it)."
            )
        limit = _token_limit(max_new_tokens, task_prompt, settings)
        data = await _read_image_source(image_file, image_url, settings, url_policy)
        source = await asyncio.to_thread(
            decode_image,
            data,
            max_pixels=settings.max_image_pixels,
            draft_to=engine.input_size if settings.jpeg_draft else None,
        )
        decoded = time.perf_counter()
        inference = await _unless_disconnected(
            request, engine.infer(source.image, task_prompt, limit)
        )
        inferred = time.perf_counter()
        # One thread per object: OpenCV and NumPy release the GIL, so masks place in parallel.
        objects = await asyncio.gather(
            *(
                asyncio.to_thread(
                    _wire_object,
                    obj,
                    raw,
                    source.width,
                    source.height,
                    mask_format,
                    settings.png_compression,
                )
                for obj, raw in pair_masks(inference.objects, inference.raw_masks)
            )
        )
        worker_ms = sum(inference.timings_ms.values())
        timings = {
            "decode_image": (decoded - started) * 1000,
            "queue_wait": max((inferred - decoded) * 1000 - worker_ms, 0.0),
            **inference.timings_ms,
            "masks": (time.perf_counter() - inferred) * 1000,
        }
        timings["total"] = (time.perf_counter() - started) * 1000
        log.info(
            "request %s prompt_chars=%d image=%dx%d objects=%d %s",
            request.state.request_id,
            len(prompt),
            source.width,
            source.height,
            len(objects),
            " ".join(f"{k}={v:.1f}ms" for k, v in timings.items()),
        )
        return SegmentResponse(
            model=settings.model,
            prompt=task_prompt,
            width=source.width,
            height=source.height,
            text=inference.text,
            objects=objects,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
        )

    return app


def _token_limit(requested: int | None, task_prompt: str, settings: Settings) -> int:
    """The request's own cap if it set one, else a budget from the classes asked for."""
    if requested:
        return min(requested, settings.max_new_tokens)
    return token_budget(
        task_prompt,
        max_objects_per_class=settings.max_objects_per_class,
        ceiling=settings.max_new_tokens,
    )


async def _read_image_source(
    image_file: UploadFile | None, image_url: str | None, settings: Settings, policy: UrlPolicy
) -> bytes:
    """Exactly one of an upload or a URL, read up to the byte limit."""
    has_url = bool(image_url and image_url.strip())
    if (image_file is None) == (not has_url):
        raise BadInput("Send exactly one of image_file (an upload) or image_url.")
    if image_file is not None:
        data = await image_file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise TooLarge(
                f"The upload is larger than the limit of {settings.max_upload_bytes:,} "
                "bytes (SEGMENT_MAX_UPLOAD_BYTES)."
            )
        return data
    assert image_url is not None
    return await fetch_image_bytes(
        image_url,
        policy=policy,
        max_bytes=settings.max_upload_bytes,
        timeout_s=settings.url_timeout_s,
        total_timeout_s=settings.url_total_timeout_s,
        max_redirects=settings.url_max_redirects,
    )


def _wire_object(
    obj: ParsedObject,
    raw_mask: np.ndarray | None,
    width: int,
    height: int,
    fmt: MaskFormat,
    png_compression: int,
) -> SegmentObject:
    """Full-resolution placement and encoding; numpy/OpenCV only, so it runs off the MLX thread."""
    placed = place_object(obj, raw_mask, width, height)
    mask = None if placed.mask is None else encode_mask(placed.mask, fmt, png_compression)
    score = None if placed.score is None else round(placed.score, 4)
    return SegmentObject(label=placed.label, box=placed.box, mask=mask, score=score)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, but abandon it (the engine stops generating) once the client has gone."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone("The client closed the connection; the request was abandoned.")
    finally:
        if not task.done():
            task.cancel()
