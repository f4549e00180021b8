"""`stream=true`: a segmentation answered as NDJSON lines while the model is still generating.

    {"type": "object", "object": {...}}   one per object, as soon as it is complete
    {"type": "done", ...whole response}    last: exactly what the non-streamed request returns
    {"type": "error", "status": 504, "detail": "..."}   instead of `done` if something fails

Errors found before the first line (bad input, queue full) never get here: the route answers
them with their usual status codes. A client that leaves cancels the request: the server
cancels this iteration, which closes the pipeline's events, which stops the generation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from app.api.errors import logged_report
from app.api.schemas import render, render_object
from app.pipeline import ResultEvent, SegmentResult

MEDIA_TYPE = "application/x-ndjson"


def line(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


async def ndjson_lines(
    events: AsyncGenerator[ResultEvent, None], request_id: str
) -> AsyncIterator[bytes]:
    """The lines of one streamed answer, read from the pipeline's events."""
    async with aclosing(events):
        try:
            async for event in events:
                if isinstance(event, SegmentResult):
                    yield line({"type": "done", **render(event).model_dump(mode="json")})
                else:
                    yield line({"type": "object", "object": render_object(event).model_dump()})
        except Exception as exc:  # after the first line: the status is sent, so it goes here
            answer = logged_report(exc, request_id)
            yield line({"type": "error", "status": answer.status, "detail": answer.detail})
