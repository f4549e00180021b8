"""`stream=true`: a segmentation answered as NDJSON lines while the model is still generating.

    {"type": "object", "object": {...}}   one per object, as soon as it is complete
    {"type": "done", ...whole response}    last: exactly what the non-streamed request returns
    {"type": "error", "detail": "..."}     instead of `done` if something fails mid-stream

Errors found before the first line (bad input, queue full) never get here: the route answers
them with their usual status codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from app.api.schemas import render, render_object
from app.errors import ServiceError
from app.pipeline import Pipeline, PreparedRequest
from app.steps.objects import SegmentedObject

log = logging.getLogger("app")
MEDIA_TYPE = "application/x-ndjson"


def line(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


async def ndjson_lines(
    pipeline: Pipeline, prepared: PreparedRequest, request_id: str
) -> AsyncIterator[bytes]:
    """The lines of one streamed answer. Closing this iterator (the client went away) cancels
    the pipeline, and with it the generation on the worker."""
    pending: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def on_object(obj: SegmentedObject) -> None:
        object_json = render_object(obj).model_dump(mode="json")
        await pending.put(line({"type": "object", "object": object_json}))

    task = asyncio.ensure_future(
        pipeline.execute(prepared, on_object=on_object, request_id=request_id)
    )
    task.add_done_callback(lambda _: pending.put_nowait(None))
    try:
        while (next_line := await pending.get()) is not None:
            yield next_line
        try:
            result = task.result()
        except ServiceError as exc:
            log.info("request %s -> stream error %d: %s", request_id, exc.status_code, exc.detail)
            yield line({"type": "error", "status": exc.status_code, "detail": exc.detail})
        except Exception:
            log.exception("request %s failed mid-stream", request_id)
            detail = f"Internal error (request id {request_id}); the log has the details."
            yield line({"type": "error", "status": 500, "detail": detail})
        else:
            yield line({"type": "done", **render(result).model_dump(mode="json")})
    finally:
        task.cancel()
