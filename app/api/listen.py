"""The service's listening sockets, opened before anything is loaded.

uvicorn binds only after the app's start-up, by which time the model would be loading: a taken
port then cost a full read of the weights per launchd retry. Binding here first makes a taken
port one plain line and an exit within a second, with nothing read.
"""

from __future__ import annotations

import errno
import json
import socket
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 1.0


class PortBusy(Exception):
    """Another program listens on the port; the message says which, when it can, and what to do."""


class CannotListen(Exception):
    """The address cannot be listened on at all (not this machine's, a privileged port)."""


def listen(host: str, port: int, backlog: int = 2048) -> list[socket.socket]:
    """Bound, listening sockets for every address `host` names (both families for a name such
    as localhost), as asyncio would open them; uvicorn serves on them as given."""
    sockets: list[socket.socket] = []
    unavailable: OSError | None = None
    try:
        for family, address in _addresses(host, port):
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:  # a family this kernel lacks (EAFNOSUPPORT)
                unavailable = exc
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            if family == socket.AF_INET6:  # the IPv4 socket serves IPv4, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                # That family is off here (IPv6 disabled, say): the others serve, as asyncio
                # does it; with none left it is an error below.
                sockets.pop().close()
                unavailable = exc
                continue
            sock.listen(backlog)
            sock.set_inheritable(False)
        if not sockets:
            raise unavailable or OSError(errno.EADDRNOTAVAIL, f"{host!r} has no address")
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortBusy(busy_message(host, port)) from exc
        raise CannotListen(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); check SEGMENT_HOST "
            "(an address of this machine, e.g. 127.0.0.1) and SEGMENT_PORT (1024 or above)."
        ) from exc
    return sockets


def _addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    """(family, address) per address `host` resolves to, each once, IPv4 and IPv6 only."""
    try:
        found = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"{host!r} does not resolve ({exc})") from exc
    unique: dict[tuple[socket.AddressFamily, tuple[str, int]], None] = {}
    for family, _, _, _, address in found:
        if family in (socket.AF_INET, socket.AF_INET6):
            unique[(family, (str(address[0]), int(address[1])))] = None
    return list(unique)


def busy_message(host: str, port: int) -> str:
    """Which program holds the port, when it is another copy of this service, and what to do."""
    holder = _probe_service(host, port)
    who = (
        f"another copy of this service is running there ({holder}): `make agent-status` "
        "shows whether it is the login agent"
        if holder
        else f"another program listens there (`lsof -nP -iTCP:{port} -sTCP:LISTEN` names it)"
    )
    return f"port {port} on {host} is already in use: {who}. Stop it, or set SEGMENT_PORT."


def health_url(host: str, port: int | str) -> str:
    """The /health a service bound to `host` answers on; a wildcard bind is asked on loopback."""
    asked = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{asked}]' if ':' in asked else asked}:{port}/health"


def get_health(url: str, timeout_s: float) -> tuple[int, bytes]:
    """(HTTP status, body) of GET /health, straight to it (no proxy); OSError when nothing
    answers. Standard library only: `make agent-status` runs it without .venv."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(url, timeout=timeout_s) as response:
            return response.status, response.read(65536)
    except urllib.error.HTTPError as exc:  # 503 while loading or failed: the body says why
        return exc.code, exc.read(65536)


def _probe_service(host: str, port: int) -> str | None:
    """'model M, status S' when the port answers /health as this service does, else None."""
    try:
        _, body = get_health(health_url(host, port), PROBE_TIMEOUT_S)
    except (OSError, ValueError):
        return None
    try:
        health = json.loads(body)
    except ValueError:
        return None
    if not isinstance(health, dict) or not {"model", "status", "version"} <= health.keys():
        return None
    return f"model {health['model']}, status {health['status']}"
