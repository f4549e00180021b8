"""HTTP layer: routes, lifespan, middleware. Parses requests, renders results; no pipeline logic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.body_limit import BodyLimit
from app.api.docs import install_docs
from app.api.errors import RequestId, install_error_handlers, request_id_of
from app.api.guards import AccessGuard, host_name, is_loopback
from app.api.json_body import JsonBody
from app.api.playground import install_playground
from app.api.schemas import (
    ErrorResponse,
    HealthResponse,
    InstalledModelInfo,
    ModelsResponse,
    SegmentJson,
    SegmentResponse,
    render,
)
from app.api.streaming import MEDIA_TYPE as NDJSON
from app.api.streaming import ndjson_lines
from app.config import Settings, get_settings
from app.errors import BadInput, ClientGone, TooLarge
from app.pipeline import ImageBytes, ImageSource, ImageUrl, Pipeline, SegmentOptions
from app.runtime.catalog import installed_models
from app.runtime.worker import Worker
from app.steps.masks import MaskFormat

log = logging.getLogger("app")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 415, 422, 500, 503, 504)
}
SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "The objects found; with stream=true, NDJSON lines instead: "
        '{"type": "object", "object": {...}} per object as it is found, then one '
        '{"type": "done", ...the whole response} (or {"type": "error", "detail": ...}).',
        "content": {NDJSON: {"schema": {"type": "string"}}},
    },
}
# The same fields as JSON (app/json_body.py turns such a body into the form before routing).
JSON_REQUEST_BODY = {
    "requestBody": {"content": {"application/json": {"schema": SegmentJson.model_json_schema()}}}
}
# The whole body may carry one maximal image plus multipart boundaries and small text fields.
FORM_OVERHEAD_BYTES = 64 * 1024
DISCONNECT_POLL_S = 0.25
T = TypeVar("T")


def _version() -> str:
    try:
        return version("paligemma-segment")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0+local"


def create_app(settings: Settings | None = None, worker: Worker | None = None) -> FastAPI:
    """The service. Tests pass their own settings and worker; `python -m app` uses the defaults."""
    settings = settings or get_settings()
    if worker is None:
        from app.runtime.pool import create_worker  # imports MLX: only when serving for real

        worker = create_worker(settings)
    pipeline = Pipeline(settings, worker)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not is_loopback(host_name(settings.host)) and settings.api_token is None:
            log.warning(
                "listening on %s without SEGMENT_API_TOKEN: anyone who can reach this address "
                "can use the service",
                settings.host,
            )
        worker.start()  # load in the background: /health answers 503 "loading" meanwhile
        yield
        await worker.close()

    app = FastAPI(
        title="PaliGemma segmentation",
        version=_version(),
        summary="Text-prompted segmentation with PaliGemma 2 mix on MLX, served locally.",
        lifespan=lifespan,
        docs_url=None,  # app.api.docs serves both from local files
        redoc_url=None,
    )
    install_error_handlers(app, settings)
    install_docs(app)
    install_playground(app)
    # Added last = runs first: CORS answers preflights, every request gets an id, the guard
    # refuses strangers, the body limit counts bytes as they stream in (before the multipart
    # parser spools them), then a JSON body becomes the form it describes.
    app.add_middleware(JsonBody, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(
        BodyLimit,
        # A JSON body carries the image in base64: 4/3 of its bytes.
        max_body_bytes=settings.max_upload_bytes * 4 // 3 + FORM_OVERHEAD_BYTES,
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
        status = worker.status()
        body = HealthResponse(
            status=status.state,
            model=status.model,
            device=status.info.device if status.info else None,
            reason=status.reason,
            loaded_at=status.loaded_at,
            requests_served=status.requests_served,
            waiting=status.waiting,
            running=status.running,
            queued=status.waiting,
            loaded=status.loaded,
            expires_at=status.expires_at,
            random_weights=bool(status.info and status.info.random_weights),
            version=app.version,
        )
        code = 200 if status.state == "ok" else 503
        headers = {} if code == 200 else {"Retry-After": "5"}
        return JSONResponse(body.model_dump(mode="json"), status_code=code, headers=headers)

    @app.get("/models", response_model=ModelsResponse)
    async def models() -> ModelsResponse:
        """Every installed checkpoint (SEGMENT_MODEL and those under SEGMENT_MODELS_DIR); a
        request's model_id picks one, loaded on demand."""
        loaded = set(worker.model.loaded_models())
        return ModelsResponse(
            models=[
                InstalledModelInfo(
                    id=m.id,
                    also_known_as=m.names()[1:],
                    default=m.id == settings.model,
                    loaded=m.id in loaded,
                    input_size=m.input_size,
                    quantization=m.quantization,
                    bytes=m.bytes,
                    random_weights=m.random_weights,
                )
                for m in await asyncio.to_thread(installed_models, settings)
            ]
        )

    @app.post(
        "/segment",
        response_model=SegmentResponse,
        responses=SEGMENT_RESPONSES,
        openapi_extra=JSON_REQUEST_BODY,
    )
    @app.post("/segment/", response_model=SegmentResponse, include_in_schema=False)
    async def segment(
        request: Request,
        prompt: Annotated[
            str, Form(min_length=1, description="What to find: 'cat', 'cat ; dog', 'detect car'.")
        ],
        image_file: Annotated[UploadFile | None, File(description="The image to segment.")] = None,
        image_url: Annotated[str | None, Form(description="Or an http(s) URL of it.")] = None,
        model_id: Annotated[str | None, Form(description="Must name the loaded model.")] = None,
        mask_format: Annotated[
            MaskFormat, Form(description="png, rle, coco_rle, polygon or none.")
        ] = "png",
        overlay: Annotated[
            bool, Form(description="Also return a PNG picture of the objects on the image.")
        ] = False,
        max_new_tokens: Annotated[
            int | None, Form(ge=1, description="Cap on generated tokens (~24 per object).")
        ] = None,
        stream: Annotated[
            bool,
            Form(description="Answer in NDJSON lines: each object as it is found, then 'done'."),
        ] = False,
    ) -> SegmentResponse | StreamingResponse:
        """Segment (or `detect`) the prompt's classes in one image: boxes, masks, labels, scores."""
        options = SegmentOptions(
            prompt=prompt,
            mask_format=mask_format,
            overlay=overlay,
            max_new_tokens=max_new_tokens,
            model_id=model_id,
            include_image=settings.compat == "seed",
        )
        request_id = request_id_of(request)
        prepared = await pipeline.prepare(
            await _image_source(image_file, image_url, settings), options
        )  # the upload's bytes are not kept while the request waits for the model
        if stream:
            worker.check_admission()
            return StreamingResponse(
                ndjson_lines(pipeline, prepared, request_id), media_type=NDJSON
            )
        result = await _unless_disconnected(
            request, pipeline.execute(prepared, request_id=request_id)
        )
        return render(result)

    return app


async def _image_source(
    image_file: UploadFile | None, image_url: str | None, settings: Settings
) -> ImageSource:
    """Exactly one of an upload (read up to the byte limit) or a URL (the pipeline fetches it)."""
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
        return ImageBytes(data)
    assert image_url is not None
    return ImageUrl(image_url)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, but abandon it (the worker stops generating) once the client has gone."""
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
