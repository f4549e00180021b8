"""How SEGMENT_* values are read: durations, host names, origins, allowlist entries.

Each parser returns the value in the form the service compares against (normalised) or raises
ValueError whose text completes "SEGMENT_X='...' ...", so the start-up message reads as one line.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_ADDRESS_LIKE = re.compile(r"[0-9a-f.:]+")  # lowercased: what precedes a CIDR's "/"
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_TOKEN = re.compile(r"[!-~]+( +[!-~]+)*")  # printable ASCII, as an Authorization header carries


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_host_name(text: str) -> bool:
    """DNS-style name; an all-digit last label (`10.0.0.300`) is a broken IP, not a name."""
    labels = text.removesuffix(".").split(".")
    return (
        0 < len(text) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def bind_host(value: str) -> str:
    if _is_ip(value) or _is_host_name(value):
        return value
    raise ValueError(
        "is not an address to listen on: use an IP address (127.0.0.1; ::1 without brackets; "
        "0.0.0.0 for every interface) or a host name such as localhost."
    )


def allowed_host(value: str) -> str:
    name = value.lower()
    if name == "*" or _is_ip(name) or _is_host_name(name):
        return name
    raise ValueError(
        "is not a host name: use the name or IP address clients put in the Host header, without "
        "scheme, port or brackets (mac-studio.local, 192.168.1.20, fe80::1), or * for any."
    )


def origin(value: str) -> str:
    """`https://App.Example:443` -> `https://app.example`: the form browsers send."""
    if value == "*":
        return value
    try:
        parts = urlsplit(value)
        scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
        well_formed = (
            _SCHEME.fullmatch(scheme) is not None
            and (_is_ip(host) or _is_host_name(host))
            and port != 0
            and "@" not in parts.netloc
            and not (parts.path or parts.query or parts.fragment or value.endswith(("?", "#")))
        )
    except ValueError:  # a bad port or an unclosed [IPv6
        well_formed = False
    if not well_formed:
        raise ValueError(
            "is not an origin: use scheme://host[:port] as a browser sends it "
            "(https://app.example, http://localhost:3000; no path, not even a trailing slash), "
            "or * for any."
        )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}"


def url_allowlist_entry(value: str) -> str:
    """A host name, an IP or a CIDR; something CIDR- or IP-like that does not parse is refused
    rather than kept as a host name that never matches (fetch.py reads IPs as networks)."""
    entry = value.lower()
    try:
        ipaddress.ip_network(entry, strict=False)
        return entry
    except ValueError:
        pass
    address, slash, _ = entry.partition("/")
    if slash and _ADDRESS_LIKE.fullmatch(address):
        raise ValueError(
            "is not a valid CIDR: use an address and a prefix of at most 32 for IPv4, 128 for "
            "IPv6 (10.0.0.0/8, 192.168.1.0/24, fd00::/8)."
        )
    if ":" not in entry and _is_host_name(entry):
        return entry
    raise ValueError(
        "is not a host, IP address or network: use a host name (nas.local), an IP address "
        "(192.168.1.20, fd00::1; no brackets) or a CIDR (10.0.0.0/8, fd00::/8; prefix at most "
        "32 for IPv4, 128 for IPv6), without scheme or port; 0.0.0.0/0 and ::/0 allow all."
    )


# "a, b" in the environment, a list in Python; each entry checked (and normalised) on its own.
# An idle model kept longer than a week may as well stay: -1 says that. The worker adds it to
# datetime.now() and to the event loop's clock, so it must be finite and far from overflowing.
MAX_KEEP_ALIVE_S = 7 * 24 * 3600.0

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(text: str) -> float | None:
    """Seconds an idle model is kept, or None for "never unload". ValueError when unreadable.

    The error's text completes "SEGMENT_KEEP_ALIVE='...' is ...".
    """
    value = text.strip().lower()
    body = value.removeprefix("-")
    if _NUMBER.fullmatch(body):
        seconds = float(body)
    else:
        parts = _PART.findall(body)
        if not parts or "".join(n + u for n, u in parts) != body:
            raise ValueError(
                "is not a duration: use e.g. 30s, 5m, 1h, 1h30m or plain seconds (at most a week, "
                "168h), 0 (unload after each request) or -1 (never unload)."
            )
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if value.startswith("-") and seconds > 0:
        return None
    if seconds > MAX_KEEP_ALIVE_S:
        raise ValueError(
            "is longer than a week (168h), the longest keep-alive: use at most 168h, or -1 to keep "
            "the model loaded for good."
        )
    return seconds


def sendable_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise ValueError(
            "has characters an Authorization header cannot carry: use printable ASCII "
            "(e.g. `openssl rand -hex 32`)."
        )
    return token
