"""Domain errors carrying their HTTP status, raised deep in the pipeline and mapped to JSON once.

No FastAPI import here: the pipeline, the CLI and the benchmarks raise these too.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `detail` says what was wrong and how to fix it."""

    status_code = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadInput(ServiceError):
    status_code = 400


class Forbidden(ServiceError):
    status_code = 403


class TooLarge(ServiceError):
    status_code = 413


class NotAnImage(ServiceError):
    status_code = 415


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


class Cancelled(Exception):
    """A job was abandoned (timeout, client gone, shutdown) and stopped between tokens."""
