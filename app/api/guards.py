"""Guards that answer before any route: who may call (Host header against DNS rebinding,
browser Origin against cross-site posts, bearer token) and how big a body may be.

A local service is reachable by every web page the user opens: a page can POST a form to
127.0.0.1 without a CORS preflight, and a rebinding DNS name can make the browser send the
page's requests here under a foreign Host. So each request is checked before routing.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import send_error
from app.config import Settings
from app.errors import Forbidden, ServiceError, TooLarge, Unauthorized, shorten

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Without the token: monitoring, and the playground's own files (they hold no data; the page
# then asks for the token and sends it with every API call).
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)


def host_name(host_header: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str | None, allowed: list[str]) -> bool:
    if not host_header:
        return False  # HTTP/1.1 requires it; only odd clients omit it
    name = host_name(host_header)
    return is_loopback(name) or "*" in allowed or name in (a.lower() for a in allowed)


def origin_allowed(origin: str, host_header: str | None, allowed: list[str]) -> bool:
    """Same-origin pages, configured origins, and nothing else (`null` included)."""
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == (host_header or "").strip().lower()


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def token_ok(authorization: str | None, token: str) -> bool:
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


class AccessGuard:
    """ASGI middleware refusing strangers (403/401) before anything else runs."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed_hosts = settings.allowed_hosts
        self.allowed_origins = settings.allowed_origins
        self.token = settings.api_token.get_secret_value() if settings.api_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await send_error(scope, send, refusal)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> ServiceError | None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not host_allowed(host, self.allowed_hosts):
            return Forbidden(
                f"Host {shorten(host or '')!r} is not accepted. Call the service as localhost "
                "or 127.0.0.1, or add the name to SEGMENT_ALLOWED_HOSTS."
            )
        origin = headers.get("origin")
        if (
            origin is not None
            and scope["method"] not in SAFE_METHODS
            and not origin_allowed(origin, host, self.allowed_origins)
        ):
            return Forbidden(
                f"Cross-origin requests from {shorten(origin)!r} are refused. Add the origin to "
                "SEGMENT_ALLOWED_ORIGINS to allow a web app to call the service."
            )
        if (
            self.token
            and not is_open(scope["path"])
            and scope["method"] != "OPTIONS"
            and not token_ok(headers.get("authorization"), self.token)
        ):
            return Unauthorized(
                "Missing or wrong API token: send 'Authorization: Bearer <SEGMENT_API_TOKEN>'."
            )
        return None


def too_large_detail(max_upload_bytes: int) -> str:
    return (
        f"The request body is larger than the {max_upload_bytes:,}-byte upload limit "
        "(SEGMENT_MAX_UPLOAD_BYTES); send a smaller image."
    )


class BodyLimit:
    """Refuse oversized bodies while they stream in, before the multipart parser spools them:
    by their declared Content-Length at once, and by counting when they come chunked."""

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
            await send_error(scope, send, TooLarge(self.detail))
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise TooLarge(self.detail)  # raised where the route reads its body
            return message

        await self.app(scope, counting_receive, send)
