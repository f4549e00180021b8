"""`image_url` -> bytes: http(s) only, bounded time, bounded size, bounded redirects."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import httpx

from app.errors import BadInput, TimedOut, TooLarge


def check_url(url: str) -> str:
    """Refuse anything but an absolute http(s) URL before any connection is made."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BadInput(f"image_url must be an absolute http:// or https:// URL, got {url[:200]!r}.")
    return url.strip()


async def fetch_image_bytes(
    url: str, *, max_bytes: int, timeout_s: float, max_redirects: int
) -> bytes:
    """Download the body, stopping as soon as it exceeds `max_bytes`; redirects re-checked."""
    current = check_url(url)
    timeout = httpx.Timeout(timeout_s)
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False
    ) as client:
        for _ in range(max_redirects + 1):
            try:
                async with client.stream("GET", current) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        current = check_url(urljoin(current, location))
                        continue
                    if response.status_code != 200:
                        raise BadInput(
                            f"image_url answered HTTP {response.status_code}; "
                            "check that the URL points to an image you can open."
                        )
                    return await _read_limited(response, max_bytes)
            except httpx.TimeoutException as exc:
                raise TimedOut(
                    f"image_url did not answer within {timeout_s:g} s; try again or upload the "
                    "file as image_file."
                ) from exc
            except httpx.HTTPError as exc:
                raise BadInput(
                    f"Could not fetch image_url: {exc.__class__.__name__}: {exc}"
                ) from exc
    raise BadInput(f"image_url redirected more than {max_redirects} times.")


async def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"image_url is {int(declared):,} bytes; the limit is {max_bytes:,}.")
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > max_bytes:
            raise TooLarge(f"image_url is larger than the limit of {max_bytes:,} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)
