"""`image_url` -> bytes without becoming a proxy into the user's network.

http(s) only; every hop (redirects included) is resolved once, refused if it lands on a
loopback, private, link-local or multicast address unless allowlisted, and then connected to at
exactly the address that was checked (no second DNS lookup for a rebinding server to exploit).
Bounded time, bounded size, bounded redirects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from app.errors import BadInput, Forbidden, TimedOut, TooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_url(url: str) -> SplitResult:
    """Refuse anything but an absolute http(s) URL before any connection is made."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BadInput(f"image_url must be an absolute http:// or https:// URL, got {url[:200]!r}.")
    if parts.username or parts.password:
        raise BadInput("image_url must not carry credentials (user:password@).")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise BadInput(f"image_url has an invalid port: {url[:200]!r}.") from exc
    return parts


class UrlPolicy:
    """Which hosts and addresses image_url may reach."""

    def __init__(self, allowlist: Sequence[str]) -> None:
        self.hosts = {entry.lower() for entry in allowlist if not _is_network(entry)}
        self.networks = [
            ipaddress.ip_network(entry, strict=False) for entry in allowlist if _is_network(entry)
        ]

    def permits(self, host: str, address: IPAddress) -> bool:
        if host.lower() in self.hosts or any(address in net for net in self.networks):
            return True
        address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:10.0.0.1 is private
        return address.is_global and not address.is_multicast

    async def resolve(self, host: str, port: int) -> IPAddress:
        """The first address of `host` this policy permits; refusing if any is forbidden."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise BadInput(f"image_url's host {host!r} does not resolve ({exc.strerror}).") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        refused = [a for a in addresses if not self.permits(host, a)]
        if refused or not addresses:
            raise Forbidden(
                f"image_url's host {host!r} resolves to {refused[0] if refused else 'nothing'}, a "
                "loopback, private, link-local or multicast address; the service does not fetch "
                "from local networks. Upload the file instead, or add the host to "
                "SEGMENT_URL_ALLOWLIST."
            )
        return addresses[0]


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return False


async def fetch_image_bytes(
    url: str,
    *,
    policy: UrlPolicy,
    max_bytes: int,
    timeout_s: float,
    total_timeout_s: float,
    max_redirects: int,
) -> bytes:
    """Download the body, stopping as soon as it exceeds `max_bytes`; redirects re-checked.

    `timeout_s` bounds each connect/read; `total_timeout_s` the whole download, so a server
    dripping one byte at a time cannot hold the request open.
    """
    try:
        async with asyncio.timeout(total_timeout_s):
            return await _fetch(url, policy, max_bytes, timeout_s, max_redirects)
    except TimeoutError as exc:
        raise TimedOut(
            f"Downloading image_url took longer than {total_timeout_s:g} s "
            "(SEGMENT_URL_TOTAL_TIMEOUT_S); send the image itself instead (image_file in a form, "
            "image in JSON)."
        ) from exc


async def _fetch(
    url: str, policy: UrlPolicy, max_bytes: int, timeout_s: float, max_redirects: int
) -> bytes:
    current = check_url(url)
    timeout = httpx.Timeout(timeout_s)
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False
    ) as client:
        for _ in range(max_redirects + 1):
            request = await _pinned_request(client, current, policy)
            try:
                response = await client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise TimedOut(
                    f"image_url did not answer within {timeout_s:g} s; try again, or send the "
                    "image itself (image_file in a form, image in JSON)."
                ) from exc
            except httpx.HTTPError as exc:
                raise BadInput(
                    f"Could not fetch image_url: {exc.__class__.__name__}: {exc}"
                ) from exc
            try:
                if response.is_redirect:
                    current = check_url(
                        urljoin(current.geturl(), response.headers.get("location", ""))
                    )
                    continue
                if response.status_code != 200:
                    raise BadInput(
                        f"image_url answered HTTP {response.status_code}; check that the URL "
                        "points to an image you can open."
                    )
                return await _read_limited(response, max_bytes, timeout_s)
            finally:
                await response.aclose()
    raise BadInput(f"image_url redirected more than {max_redirects} times.")


async def _pinned_request(
    client: httpx.AsyncClient, url: SplitResult, policy: UrlPolicy
) -> httpx.Request:
    """A request to the checked address, carrying the original Host and TLS server name."""
    host = url.hostname or ""
    port = url.port or (443 if url.scheme.lower() == "https" else 80)
    address = await policy.resolve(host, port)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{url.port}" if url.port else literal
    return client.build_request(
        "GET",
        url._replace(netloc=netloc).geturl(),
        headers={"Host": url.netloc, "Accept": "image/*"},
        extensions={"sni_hostname": host},
    )


async def _read_limited(response: httpx.Response, max_bytes: int, timeout_s: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"image_url is {int(declared):,} bytes; the limit is {max_bytes:,}.")
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            if received > max_bytes:
                raise TooLarge(f"image_url is larger than the limit of {max_bytes:,} bytes.")
            chunks.append(chunk)
    except httpx.TimeoutException as exc:
        raise TimedOut(f"image_url stalled for more than {timeout_s:g} s while sending.") from exc
    except httpx.HTTPError as exc:
        raise BadInput(f"image_url's download broke off: {exc.__class__.__name__}.") from exc
    return b"".join(chunks)
