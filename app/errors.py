"""Domain errors, raised anywhere, and `report`: the one place an error becomes what a caller
is told (status, detail, headers).

No web framework here: the pipeline, the CLI and the benchmarks raise and report these too. The
HTTP layer turns `report` into a JSON response, an ASGI guard's refusal or an NDJSON `error`
line; the CLI prints its detail.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ServiceError(Exception):
    """Base class: `detail` says what was wrong and how to fix it."""

    status_code = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadInput(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    """No API token, or the wrong one."""

    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status_code = 403


class TooLarge(ServiceError):
    status_code = 413


class UnsupportedMedia(ServiceError):
    """A body or a file of a type the service does not take."""

    status_code = 415


class NotAnImage(UnsupportedMedia):
    pass


class InvalidRequest(ServiceError):
    """A field is missing or has the wrong type or value."""

    status_code = 422


class NotReady(ServiceError):
    """Model still loading or failed to load; `Retry-After` tells clients when to try again."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after_s: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class Busy(NotReady):
    """The request queue is full."""


class TimedOut(ServiceError):
    status_code = 504


class ClientGone(ServiceError):
    """The client disconnected before the answer was ready (nginx's 499; nobody reads it)."""

    status_code = 499


class ProtocolError(ServiceError):
    """What the web framework refused by itself (404, 405, a body it cannot parse)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, headers=headers)
        self.status_code = status


class Cancelled(Exception):
    """A job was abandoned (timeout, client gone, shutdown) and stopped between tokens."""


@dataclass(frozen=True)
class ErrorReport:
    """What the caller is told about an error."""

    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    expected: bool = True  # False: a bug, whose traceback belongs in the log


def report(error: BaseException, request_id: str) -> ErrorReport:
    """The one mapping from an exception to its answer: a domain error says its own status and
    detail; anything else is a bug, a 500 whose detail points at the log by request id."""
    if isinstance(error, ServiceError):
        return ErrorReport(error.status_code, error.detail, dict(error.headers))
    detail = f"Internal error (request id {request_id}); the log has the details."
    return ErrorReport(500, detail, expected=False)


def shorten(text: str, limit: int = 80) -> str:
    """A caller's value as an error message quotes it: never the whole of a long one."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
