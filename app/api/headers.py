"""Headers on every response: the request's id, `nosniff`, and a same-origin CSP on every page.

Set in one place, the outermost middleware, so no answer goes out without them: not the
playground under /static/, not the API docs, not a guard's refusal. A route that needs a
different policy (the API docs) sets its own and is left alone. The request id is given here,
before anything else runs, so every log line and error detail of the request can name it.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Everything from this service, nothing from anywhere else; images may also be data:/blob:
# URLs (the playground draws the upload and the overlay from them).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Pages link only to this service; a link followed elsewhere carries no Referer. Not
# `no-referrer`: that makes a browser send `Origin: null` with a plain form POST, which the
# access guard refuses as cross-origin.
REFERRER_POLICY = "same-origin"


class ResponseHeaders:
    """Pure ASGI middleware: gives the request its id, adds the headers to
    `http.response.start`, passes the rest. (Not `@app.middleware("http")`, which wraps errors
    raised while the body streams in, the upload limit's 413, in exception groups.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])  # optional in ASGI; MutableHeaders needs it
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Request-ID", request_id)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").lower().startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                    headers.setdefault("Referrer-Policy", REFERRER_POLICY)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_headers(app: FastAPI) -> None:
    """Call after every other `add_middleware`: the last added runs first, so the headers
    reach the guards' own refusals too."""
    app.add_middleware(ResponseHeaders)
