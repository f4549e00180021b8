"""The one place errors become JSON `{"detail": ...}`, each response tagged with a request id."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.errors import ServiceError

log = logging.getLogger("app")

_UNPARSABLE_BODY = "There was an error parsing the body"  # FastAPI's words for a broken form


class RequestId:
    """Give every request an id (logs, error details) and echo it in `X-Request-ID`.

    Pure ASGI rather than `@app.middleware("http")`, which wraps errors raised while the body
    streams in (the upload limit's 413) in exception groups.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            headers = message.get("headers", [])
            if message["type"] == "http.response.start" and not any(
                name.lower() == b"x-request-id" for name, _ in headers
            ):
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        log.info("request %s -> %d: %s", request_id_of(request), exc.status_code, exc.detail)
        return _json(request, exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail, headers = str(exc.detail), dict(exc.headers or {})
        if exc.status_code == 413:
            detail = too_large_detail(settings.max_upload_bytes)
            headers["Connection"] = "close"  # don't drain the rest of a huge upload
        elif detail == _UNPARSABLE_BODY:
            detail = (
                "The form could not be parsed: send multipart/form-data (or "
                "application/x-www-form-urlencoded) with UTF-8 text fields."
            )
        return _json(request, exc.status_code, detail, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(request, 422, "Invalid request: " + "; ".join(map(_problem, exc.errors())))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id_of(request)
        log.error("request %s failed", rid, exc_info=exc)
        return _json(request, 500, f"Internal error (request id {rid}); the log has the details.")


def _problem(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"][1:]) or "body"
    if error["type"] == "missing":
        return f"{field} is missing or empty; it is required."
    return f"{field}: {error['msg']}."


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


def _json(
    request: Request, status: int, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"detail": detail},
        status_code=status,
        # Set here too: a 500 is answered outside RequestId, by Starlette's outermost layer.
        headers={**(headers or {}), "X-Request-ID": request_id_of(request)},
    )


def too_large_detail(max_upload_bytes: int) -> str:
    return (
        f"The request body is larger than the {max_upload_bytes:,}-byte upload limit "
        "(SEGMENT_MAX_UPLOAD_BYTES); send a smaller image."
    )


async def send_json(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    """A JSON error straight from ASGI middleware, before any route runs."""
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
