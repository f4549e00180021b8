"""Errors on the wire: `app.errors.report` turned into a JSON response (`{"detail": ...}`), from
the exception handlers and from the ASGI guards that answer before routing."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Scope, Send

from app.errors import ErrorReport, ProtocolError, ServiceError, TooLarge, report
from app.request import problem

log = logging.getLogger("app")

_UNPARSABLE_BODY = "There was an error parsing the body"  # Starlette's words for a broken form


def install_error_handlers(app: FastAPI) -> None:
    """Every exception a route raises is answered through `report`, the one mapping."""

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(domain_error(exc), request_id_of(request))

    # Starlette routes these to the most specific handler, so name them too.
    app.exception_handler(HTTPException)(any_error)
    app.exception_handler(RequestValidationError)(any_error)
    app.exception_handler(ServiceError)(any_error)


def domain_error(exc: BaseException) -> BaseException:
    """The framework's own refusals as the domain errors they mean; others as they are."""
    if isinstance(exc, RequestValidationError):
        problems = "; ".join(
            problem(e["loc"][1:], e["type"], e.get("ctx"), e["msg"]) for e in exc.errors()
        )
        return ProtocolError(422, f"Invalid request: {problems}")
    if isinstance(exc, HTTPException):
        if exc.status_code == 413:
            return TooLarge(str(exc.detail))
        detail = str(exc.detail)
        if detail == _UNPARSABLE_BODY:
            detail = (
                "The form could not be parsed: send multipart/form-data (or "
                "application/x-www-form-urlencoded) with UTF-8 text fields."
            )
        return ProtocolError(exc.status_code, detail, dict(exc.headers or {}))
    return exc


def logged_report(error: BaseException, request_id: str) -> ErrorReport:
    """`report`, logged once: a line for an expected refusal, the traceback for a bug."""
    answer = report(error, request_id)
    if answer.expected:
        log.info("request %s -> %d: %s", request_id, answer.status, answer.detail)
    else:
        log.error("request %s failed", request_id, exc_info=error)
    return answer


def error_response(error: BaseException, request_id: str) -> JSONResponse:
    answer = logged_report(error, request_id)
    # Set here too: a 500 is answered outside the middleware, by Starlette's outermost layer.
    headers = {**answer.headers, "X-Request-ID": request_id, "X-Content-Type-Options": "nosniff"}
    if answer.status == 413:
        headers["Connection"] = "close"  # don't drain the rest of a huge upload
    return JSONResponse({"detail": answer.detail}, status_code=answer.status, headers=headers)


async def send_error(scope: Scope, send: Send, error: ServiceError) -> None:
    """A refusal straight from ASGI middleware, before any route runs."""
    answer = logged_report(error, scope.get("state", {}).get("request_id", "-"))
    body = json.dumps({"detail": answer.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
    if answer.status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "-")
