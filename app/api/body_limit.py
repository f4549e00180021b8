"""Refuse oversized request bodies while they stream in, before the multipart parser spools them.

Starlette's own RequestBodyLimitMiddleware answers in plain text; our clients get JSON.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import send_json, too_large_detail


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.detail = too_large_detail(max_upload_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_json(send, 413, self.detail, {"connection": "close"})
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside body parsing, so FastAPI routes it to the JSON 413 handler.
                    raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counting_receive, send)
