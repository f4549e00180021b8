"""The API's routes: `POST /segment`, `GET /health`, `GET /models`. Each parses, calls one
thing below it, and renders; no pipeline logic here.

"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.body_schemas import request_body_schemas
from app.api.errors import request_id_of
from app.api.request_body import segment_request
from app.api.schemas import (
    ErrorResponse,
    HealthResponse,
    InstalledModelInfo,
    ModelsResponse,
    SegmentResponse,
    render,
)
from app.api.streaming import MEDIA_TYPE as NDJSON
from app.api.streaming import ndjson_lines
from app.config import Settings
from app.errors import ClientGone
from app.pipeline import Pipeline, collect
from app.runtime.catalog import installed_models
from app.runtime.worker import Worker

T = TypeVar("T")
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


def api_routes(settings: Settings, worker: Worker, version: str) -> APIRouter:
    router = APIRouter()
    pipeline = Pipeline(settings, worker)

    @router.get(
        "/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}}
    )
    async def health() -> JSONResponse:
        """200 once the model is loaded and warm; 503 with `status` loading/error and the reason."""
        status = worker.status()
        answer = HealthResponse(
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
            version=version,
        )
        code = 200 if status.state == "ok" else 503
        headers = {} if code == 200 else {"Retry-After": "5"}
        return JSONResponse(answer.model_dump(mode="json"), status_code=code, headers=headers)

    @router.get("/models", response_model=ModelsResponse)
    async def models() -> ModelsResponse:
        """Every installed checkpoint (SEGMENT_MODEL and those under SEGMENT_MODELS_DIR); a
        request's model_id picks one, loaded on demand."""
        loaded = set(worker.backend.loaded_models())
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

    @router.post(
        "/segment",
        response_model=SegmentResponse,
        responses=SEGMENT_RESPONSES,
        openapi_extra={"requestBody": request_body_schemas()},
    )
    @router.post("/segment/", response_model=SegmentResponse, include_in_schema=False)
    async def segment(request: Request) -> SegmentResponse | StreamingResponse:
        """Segment (or `detect`) the prompt's classes in one image: boxes, masks, labels, scores.

        Send a form (the image as the upload `image_file`) or JSON (the image base64 in
        `image`); or `image_url` instead of the image in either.
        """
        request_id = request_id_of(request)
        # Parsed here rather than as a dependency, whose cache would keep the upload's bytes
        # for the whole request: past `start`, only what the pipeline keeps stays.
        asked = await segment_request(request, settings)
        streamed = asked.stream
        events = await pipeline.start(asked, request_id=request_id)
        del asked
        if streamed:
            return StreamingResponse(ndjson_lines(events, request_id), media_type=NDJSON)
        return render(await unless_client_leaves(request, collect(events)))

    return router


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, but cancel it (the worker stops generating) once the client has gone.

    The body is read by now, so the next thing the server can receive is the disconnect; both
    tasks are over when this returns, so nothing is left behind.
    """

    async def client_left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    working = asyncio.ensure_future(work)
    watching = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({working, watching}, return_when=asyncio.FIRST_COMPLETED)
        if working.done():
            return working.result()
        raise ClientGone("The client closed the connection; the request was abandoned.")
    finally:
        for task in (working, watching):
            task.cancel()
        await asyncio.gather(working, watching, return_exceptions=True)
