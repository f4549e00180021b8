"""Who may call: Host header (DNS rebinding), browser Origin (cross-site posts), bearer token.

A local service is reachable by every web page the user opens: a page can POST a form to
127.0.0.1 without a CORS preflight, and a rebinding DNS name can make the browser send the
page's requests here under a foreign Host. So each request is checked before routing.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import send_json
from app.config import Settings

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
    """ASGI middleware answering 403/401 in JSON before anything else runs."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed_hosts = settings.allowed_hosts
        self.allowed_origins = settings.allowed_origins
        self.token = settings.api_token.get_secret_value() if settings.api_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                status, detail, extra = refusal
                await send_json(send, status, detail, extra)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not host_allowed(host, self.allowed_hosts):
            return (
                403,
                (
                    f"Host {host!r} is not accepted. Call the service as localhost or "
                    "127.0.0.1, or add the name to SEGMENT_ALLOWED_HOSTS."
                ),
                {},
            )
        origin = headers.get("origin")
        if (
            origin is not None
            and scope["method"] not in SAFE_METHODS
            and not origin_allowed(origin, host, self.allowed_origins)
        ):
            return (
                403,
                (
                    f"Cross-origin requests from {origin!r} are refused. Add the origin to "
                    "SEGMENT_ALLOWED_ORIGINS to allow a web app to call the service."
                ),
                {},
            )
        if (
            self.token
            and not is_open(scope["path"])
            and scope["method"] != "OPTIONS"
            and not token_ok(headers.get("authorization"), self.token)
        ):
            return (
                401,
                ("Missing or wrong API token: send 'Authorization: Bearer <SEGMENT_API_TOKEN>'."),
                {"www-authenticate": "Bearer"},
            )
        return None
