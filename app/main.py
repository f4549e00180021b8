"""HTTP layer: routes, lifespan, and the one place errors become JSON. No model logic here."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from app.config import Settings, get_settings
from app.engine import Engine, Inference
from app.errors import BadInput, ServiceError, TooLarge
from app.fetch import fetch_image_bytes
from app.images import decode_image
from app.masks import MaskFormat, encode_mask
from app.prompts import build_prompt
from app.schemas import ErrorResponse, HealthResponse, SegmentObject, SegmentResponse
from app.segmentation import place_objects

log = logging.getLogger("app")

ERRORS = {code: {"model": ErrorResponse} for code in (400, 403, 413, 415, 422, 500, 503, 504)}


def _version() -> str:
    try:
        return version("paligemma-segment")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0+local"


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The service. Tests pass their own settings and engine; `python -m app` uses the defaults."""
    settings = settings or get_settings()
    engine = engine or Engine(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()  # load in the background: /health answers 503 "loading" meanwhile
        yield
        await engine.close()

    app = FastAPI(
        title="PaliGemma segmentation",
        version=_version(),
        summary="Text-prompted segmentation with PaliGemma 2 mix on MLX, served locally.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings
    _install_error_handlers(app)

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
        prompt: Annotated[str, Form(description="What to find: 'cat', 'cat ; dog', 'detect car'.")],
        image_file: Annotated[UploadFile | None, File(description="The image to segment.")] = None,
        image_url: Annotated[str | None, Form(description="Or an http(s) URL of it.")] = None,
        model_id: Annotated[str | None, Form(description="Must name the loaded model.")] = None,
        mask_format: Annotated[MaskFormat, Form(description="png, rle, polygon or none.")] = "png",
        max_new_tokens: Annotated[
            int | None, Form(ge=1, description="Cap on generated tokens (~22 per object).")
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
        limit = min(max_new_tokens or settings.max_new_tokens, settings.max_new_tokens)
        data = await _read_image_source(image_file, image_url, settings)
        image = await asyncio.to_thread(decode_image, data, max_pixels=settings.max_image_pixels)
        decoded = time.perf_counter()
        inference = await engine.infer(image, task_prompt, limit)
        inferred = time.perf_counter()
        objects = await asyncio.to_thread(
            _wire_objects,
            inference,
            image.width,
            image.height,
            mask_format,
            settings.png_compression,
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
            image.width,
            image.height,
            len(objects),
            " ".join(f"{k}={v:.1f}ms" for k, v in timings.items()),
        )
        return SegmentResponse(
            model=settings.model,
            prompt=task_prompt,
            width=image.width,
            height=image.height,
            text=inference.text,
            objects=objects,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
        )

    return app


async def _read_image_source(
    image_file: UploadFile | None, image_url: str | None, settings: Settings
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
        max_bytes=settings.max_upload_bytes,
        timeout_s=settings.url_timeout_s,
        max_redirects=settings.url_max_redirects,
    )


def _wire_objects(
    inference: Inference, width: int, height: int, fmt: MaskFormat, png_compression: int
) -> list[SegmentObject]:
    """Full-resolution placement and encoding; numpy/OpenCV only, so it runs off the MLX thread."""
    placed = place_objects(inference.objects, inference.raw_masks, width, height)
    return [
        SegmentObject(
            label=o.label,
            box=o.box,
            mask=None if o.mask is None else encode_mask(o.mask, fmt, png_compression),
            score=None if o.score is None else round(o.score, 4),
        )
        for o in placed
    ]


def _install_error_handlers(app: FastAPI) -> None:
    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.request_id = uuid.uuid4().hex[:12]
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        log.info("request %s -> %d: %s", _request_id(request), exc.status_code, exc.detail)
        return JSONResponse(
            {"detail": exc.detail},
            status_code=exc.status_code,
            headers={**exc.headers, "X-Request-ID": _request_id(request)},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse(
            {"detail": f"Invalid request: {problems}."},
            status_code=422,
            headers={"X-Request-ID": _request_id(request)},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = _request_id(request)
        log.exception("request %s failed", rid, exc_info=exc)
        return JSONResponse(
            {"detail": f"Internal error (request id {rid}); the log has the details."},
            status_code=500,
            headers={"X-Request-ID": rid},
        )


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "-")
