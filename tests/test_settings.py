"""SEGMENT_*: every value is refused at start-up with one plain line, or works for every request.

The refusals go through the start-up path (`get_settings()` reading the environment); the
largest accepted values are then used where the service uses them.
"""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import logging
import math
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import uvicorn.config
from annotated_types import Le

from app.api.app import FORM_OVERHEAD_BYTES
from app.api.guards import origin_allowed, token_ok
from app.config import Settings, SettingsError, get_settings
from app.config.values import MAX_KEEP_ALIVE_S, keep_alive_seconds
from app.errors import BadInput, TooLarge
from app.model.feature_cache import FeatureCache
from app.steps.fetch import UrlPolicy, fetch_image_bytes
from app.steps.images import decode_image
from scripts.harness import ROOT, local_client, wait_healthy
from tests.fake_model import fake_service
from tests.images import gradient, image_bytes

EX_CONFIG = 78

# (variable, value given, words the line must hold besides the variable)
REFUSED: list[tuple[str, str, str]] = [
    ("SEGMENT_HOST", "", "IP address"),
    ("SEGMENT_HOST", "bad host!", "IP address"),
    ("SEGMENT_HOST", "[::1]", "without brackets"),
    ("SEGMENT_HOST", "http://localhost", "host name"),
    ("SEGMENT_HOST", "300.1.1.1", "IP address"),
    ("SEGMENT_PORT", "0", "from 1 to 65,535"),
    ("SEGMENT_PORT", "65536", "from 1 to 65,535"),
    ("SEGMENT_PORT", "eighty", "whole number"),
    ("SEGMENT_LOG_LEVEL", "LOUD", "critical, error, warning, info, debug"),
    ("SEGMENT_LOG_LEVEL", "warn", "warning"),  # logging knows it, uvicorn does not
    ("SEGMENT_LOG_LEVEL", "trace", "debug"),  # uvicorn knows it, logging does not
    ("SEGMENT_MAX_UPLOAD_BYTES", "0", "from 1 to 1,073,741,824"),
    ("SEGMENT_MAX_UPLOAD_BYTES", "1099511627776", "from 1 to 1,073,741,824"),
    ("SEGMENT_MAX_UPLOAD_BYTES", "20MB", "whole number"),
    ("SEGMENT_MAX_IMAGE_PIXELS", "89478486", "from 1 to 89,478,485"),
    ("SEGMENT_MAX_IMAGE_PIXELS", "0", "from 1 to 89,478,485"),
    ("SEGMENT_MAX_PROMPT_CHARS", "4097", "from 1 to 4,096"),
    ("SEGMENT_MAX_NEW_TOKENS", "4097", "from 1 to 4,096"),
    ("SEGMENT_MAX_OBJECTS_PER_CLASS", "257", "from 1 to 256"),
    ("SEGMENT_MAX_LOADED_MODELS", "0", "from 1 to 16"),
    ("SEGMENT_MAX_QUEUE", "129", "from 1 to 128"),
    ("SEGMENT_MAX_QUEUE", "1e3", "whole number"),
    ("SEGMENT_MAX_QUEUE", "9" * 5000, "whole number"),
    ("SEGMENT_REQUEST_TIMEOUT_S", "inf", "at most 86400"),
    ("SEGMENT_REQUEST_TIMEOUT_S", "nan", "at most 86400"),
    ("SEGMENT_REQUEST_TIMEOUT_S", "1e300", "at most 86400"),
    ("SEGMENT_REQUEST_TIMEOUT_S", "86400.5", "at most 86400"),
    ("SEGMENT_REQUEST_TIMEOUT_S", "0", "above 0"),
    ("SEGMENT_URL_TIMEOUT_S", "-1", "above 0"),
    ("SEGMENT_URL_TIMEOUT_S", "Infinity", "at most 86400"),
    ("SEGMENT_URL_TOTAL_TIMEOUT_S", "1e300", "at most 86400"),
    ("SEGMENT_URL_TOTAL_TIMEOUT_S", "-inf", "at most 86400"),
    ("SEGMENT_URL_MAX_REDIRECTS", "21", "from 0 to 20"),
    ("SEGMENT_URL_MAX_REDIRECTS", "-1", "from 0 to 20"),
    ("SEGMENT_WARMUP", "maybe", "true or false"),
    ("SEGMENT_KEEP_ALIVE", "nonsense", "30s, 5m, 1h"),
    ("SEGMENT_KEEP_ALIVE", "1e300s", "30s, 5m, 1h"),
    ("SEGMENT_KEEP_ALIVE", "1e300", "30s, 5m, 1h"),
    ("SEGMENT_KEEP_ALIVE", "nan", "30s, 5m, 1h"),
    ("SEGMENT_KEEP_ALIVE", "inf", "30s, 5m, 1h"),
    ("SEGMENT_KEEP_ALIVE", "--1", "30s, 5m, 1h"),
    ("SEGMENT_KEEP_ALIVE", "99999999999h", "168h"),
    ("SEGMENT_KEEP_ALIVE", "168h1s", "168h"),
    ("SEGMENT_CONSTRAINED", "sometimes", "true or false"),
    ("SEGMENT_PNG_COMPRESSION", "10", "from 0 to 9"),
    ("SEGMENT_PRELOAD", "later", "true or false"),
    ("SEGMENT_LOAD_RETRY_S", "0", "above 0"),
    ("SEGMENT_LOG_FILE", "/tmp", "is a directory"),
    ("SEGMENT_LOG_MAX_MB", "0", "from 1 to 1,024"),
    ("SEGMENT_LOG_BACKUPS", "0", "from 1 to 100"),
    ("SEGMENT_JPEG_DRAFT", "2", "true or false"),
    ("SEGMENT_BLAS", "openblas", "'auto' or 'bundled'"),
    ("SEGMENT_DTYPE", "float16", "'checkpoint'"),
    ("SEGMENT_COMPAT", "old", "'seed'"),
    ("SEGMENT_DEVICE", "metal", "'gpu'"),
    ("SEGMENT_IMAGE_CACHE_ENTRIES", "10001", "from 0 to 10,000"),
    ("SEGMENT_IMAGE_CACHE_MB", "1048577", "from 0 to 1,048,576"),
    ("SEGMENT_IMAGE_CACHE_MB", "-1", "from 0 to 1,048,576"),
    ("SEGMENT_IMAGE_WORKERS", "0", "from 1 to 16"),
    ("SEGMENT_MAX_BATCH", "0", "from 1 to 64"),
    ("SEGMENT_CPU_CACHE_MB", "-1", "from 0 to 1,048,576"),
    ("SEGMENT_MAX_BATCH", "65", "from 1 to 64"),
    ("SEGMENT_IMAGE_WORKERS", "17", "from 1 to 16"),
    ("SEGMENT_ALLOWED_HOSTS", "mac.local:8000", "without scheme, port"),
    ("SEGMENT_ALLOWED_HOSTS", "ok.local, http://mac.local", "without scheme, port"),
    ("SEGMENT_ALLOWED_ORIGINS", "app.example", "scheme://host[:port]"),
    ("SEGMENT_ALLOWED_ORIGINS", "localhost:3000", "scheme://host[:port]"),
    ("SEGMENT_ALLOWED_ORIGINS", "https://app.example/", "trailing slash"),
    ("SEGMENT_ALLOWED_ORIGINS", "https://app.example/page?q=1", "no path"),
    ("SEGMENT_ALLOWED_ORIGINS", "http://x:99999", "scheme://host[:port]"),
    ("SEGMENT_ALLOWED_ORIGINS", "http://[::1", "scheme://host[:port]"),
    ("SEGMENT_ALLOWED_ORIGINS", "null", "scheme://host[:port]"),
    ("SEGMENT_API_TOKEN", "pässword", "printable ASCII"),
    ("SEGMENT_API_TOKEN", "line\nbreak", "printable ASCII"),
    ("SEGMENT_URL_ALLOWLIST", "10.0.0.0/33", "prefix of at most 32"),
    ("SEGMENT_URL_ALLOWLIST", "fd00::/129", "128 for IPv6"),
    ("SEGMENT_URL_ALLOWLIST", "10.0.0.0/8/8", "CIDR"),
    ("SEGMENT_URL_ALLOWLIST", "10.0.0.256", "IP address"),
    ("SEGMENT_URL_ALLOWLIST", "[fd00::1]", "no brackets"),
    ("SEGMENT_URL_ALLOWLIST", "http://nas.local", "without scheme or port"),
    ("SEGMENT_URL_ALLOWLIST", "nas.local:8080", "without scheme or port"),
    ("SEGMENT_URL_ALLOWLIST", "*", "0.0.0.0/0"),
]

# (variable, value given, the setting it becomes): the edges of every range.
ACCEPTED: list[tuple[str, str, Any]] = [
    ("SEGMENT_MODEL", "owner/name", "owner/name"),
    ("SEGMENT_VAE_PATH", "weights/vae.npz", "weights/vae.npz"),
    ("SEGMENT_MODELS_DIR", "somewhere", "somewhere"),
    ("SEGMENT_HOST", "::1", "::1"),
    ("SEGMENT_HOST", " 0.0.0.0 ", "0.0.0.0"),
    ("SEGMENT_HOST", "mac-studio.local", "mac-studio.local"),
    ("SEGMENT_PORT", "65535", 65535),
    ("SEGMENT_LOG_LEVEL", "WARNING", "warning"),
    ("SEGMENT_LOG_LEVEL", "Critical", "critical"),
    ("SEGMENT_MAX_UPLOAD_BYTES", "1073741824", 1024**3),
    ("SEGMENT_MAX_IMAGE_PIXELS", "89478485", 89_478_485),
    ("SEGMENT_MAX_PROMPT_CHARS", "4096", 4096),
    ("SEGMENT_MAX_NEW_TOKENS", "4096", 4096),
    ("SEGMENT_MAX_OBJECTS_PER_CLASS", "256", 256),
    ("SEGMENT_MAX_LOADED_MODELS", "16", 16),
    ("SEGMENT_MAX_QUEUE", "128", 128),
    ("SEGMENT_REQUEST_TIMEOUT_S", "86400", 86400.0),
    ("SEGMENT_REQUEST_TIMEOUT_S", "0.001", 0.001),
    ("SEGMENT_URL_TIMEOUT_S", "86400", 86400.0),
    ("SEGMENT_URL_TOTAL_TIMEOUT_S", "86400", 86400.0),
    ("SEGMENT_URL_MAX_REDIRECTS", "0", 0),
    ("SEGMENT_URL_MAX_REDIRECTS", "20", 20),
    ("SEGMENT_WARMUP", "false", False),
    ("SEGMENT_KEEP_ALIVE", "168h", "168h"),
    ("SEGMENT_KEEP_ALIVE", "604800", "604800"),
    ("SEGMENT_KEEP_ALIVE", "-99999999999h", "-99999999999h"),  # negative: never unload
    ("SEGMENT_KEEP_ALIVE", "0", "0"),
    ("SEGMENT_CONSTRAINED", "0", False),
    ("SEGMENT_PNG_COMPRESSION", "9", 9),
    ("SEGMENT_PRELOAD", "false", False),
    ("SEGMENT_LOAD_RETRY_S", "86400", 86400.0),
    ("SEGMENT_LOG_FILE", "logs/service.log", Path("logs/service.log")),
    ("SEGMENT_LOG_FILE", "", None),
    ("SEGMENT_LOG_MAX_MB", "1024", 1024),
    ("SEGMENT_LOG_BACKUPS", "100", 100),
    ("SEGMENT_JPEG_DRAFT", "off", False),
    ("SEGMENT_BLAS", "bundled", "bundled"),
    ("SEGMENT_DTYPE", "checkpoint", "checkpoint"),
    ("SEGMENT_COMPAT", "seed", "seed"),
    ("SEGMENT_DEVICE", "cpu", "cpu"),
    ("SEGMENT_IMAGE_CACHE_ENTRIES", "10000", 10_000),
    ("SEGMENT_IMAGE_CACHE_MB", "1048576", 1024 * 1024),
    ("SEGMENT_IMAGE_WORKERS", "16", 16),
    ("SEGMENT_MAX_BATCH", "64", 64),
    ("SEGMENT_CPU_CACHE_MB", "0", 0),
    ("SEGMENT_ALLOWED_HOSTS", "Mac.Local, *, fe80::1", ["mac.local", "*", "fe80::1"]),
    (
        "SEGMENT_ALLOWED_ORIGINS",
        "HTTPS://App.Example:443, http://localhost:3000, http://[::1]:80, *",
        ["https://app.example", "http://localhost:3000", "http://[::1]", "*"],
    ),
    ("SEGMENT_API_TOKEN", " s3cret-token ", "s3cret-token"),
    ("SEGMENT_API_TOKEN", "  ", None),
    (
        "SEGMENT_URL_ALLOWLIST",
        "NAS.local, 10.0.0.1/8, fd00::/8, 192.168.1.20, 0.0.0.0/0",
        ["nas.local", "10.0.0.1/8", "fd00::/8", "192.168.1.20", "0.0.0.0/0"],
    ),
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [name for name in os.environ if name.startswith("SEGMENT_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def load(monkeypatch: pytest.MonkeyPatch, **environ: str) -> Settings:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return get_settings()


def upper_bound(field: str) -> Any:
    return next(m.le for m in Settings.model_fields[field].metadata if isinstance(m, Le))


def test_every_setting_has_refusals_and_edges() -> None:
    names = {f"SEGMENT_{field.upper()}" for field in Settings.model_fields}
    any_path_or_id = {"SEGMENT_MODEL", "SEGMENT_VAE_PATH", "SEGMENT_MODELS_DIR"}
    assert names - any_path_or_id == {name for name, _, _ in REFUSED}
    assert names == {name for name, _, _ in ACCEPTED}


@pytest.mark.parametrize(("name", "value", "says"), REFUSED)
def test_a_bad_value_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load(monkeypatch, **{name: value})
    [line] = caught.value.problems
    assert line.startswith(name), line
    assert says in line and ": use " in line, line
    assert "\n" not in line, line
    if name == "SEGMENT_API_TOKEN":
        assert value.split()[0] not in line, line  # a secret is never echoed
    else:
        assert repr(value.strip().split(", ")[-1])[:40] in line, line
    assert len(line) < 400, line  # a 5000-digit value is shortened


@pytest.mark.parametrize(("name", "value", "expected"), ACCEPTED)
def test_an_edge_value_is_accepted(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: Any
) -> None:
    got = getattr(load(monkeypatch, **{name: value}), name.removeprefix("SEGMENT_").lower())
    if name == "SEGMENT_API_TOKEN" and got is not None:
        got = got.get_secret_value()
    elif name in ("SEGMENT_VAE_PATH", "SEGMENT_MODELS_DIR"):
        got = str(got)  # made absolute from the current directory
        expected = str(Path(expected).absolute())
    assert got == expected


def test_every_problem_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError) as caught:
        load(
            monkeypatch, SEGMENT_PORT="0", SEGMENT_URL_ALLOWLIST="10.0.0.0/33, a.local, 1.2.3.4/40"
        )
    lines = caught.value.problems
    assert len(lines) == 3, lines
    assert sorted(line.split(" ", 2)[:2] for line in lines) == [
        ["SEGMENT_PORT='0'", "is"],
        ["SEGMENT_URL_ALLOWLIST", "entry"],
        ["SEGMENT_URL_ALLOWLIST", "entry"],
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        ([], {"SEGMENT_KEEP_ALIVE": "nonsense"}),
        (["serve"], {"SEGMENT_MAX_QUEUE": "0", "SEGMENT_REQUEST_TIMEOUT_S": "inf"}),
        (["segment", "x.png", "--prompt", "cat"], {"SEGMENT_LOG_LEVEL": "LOUD"}),
        (
            ["segment", "x.png", "--prompt", "cat", "--server", "http://127.0.0.1:9"],
            {"SEGMENT_API_TOKEN": "pässword"},
        ),
    ],
)
def test_start_up_refuses_in_plain_lines(argv: list[str], bad: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
    done = subprocess.run(
        [sys.executable, "-m", "app", *argv],
        cwd=ROOT,
        env={**env, **bad},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EX_CONFIG, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.splitlines()
    named = sorted(re.findall(r"^error: (SEGMENT_[A-Z_]+)[= ]", done.stderr, re.MULTILINE))
    assert len(lines) == len(bad) and named == sorted(bad), lines
    assert "Traceback" not in done.stderr + done.stdout


# -- the largest accepted values, where they are used --------------------------------------
PNG = image_bytes(gradient(64, 48))


def post(client: Any, data: bytes) -> Any:
    return client.post("/segment", data={"prompt": "cat"}, files={"image_file": ("a.png", data)})


def test_longest_durations_fit_the_clocks_they_meet() -> None:
    assert keep_alive_seconds(f"{MAX_KEEP_ALIVE_S:g}") == MAX_KEEP_ALIVE_S  # the longest accepted
    timeouts = ("request_timeout_s", "url_timeout_s", "url_total_timeout_s")
    longest = [*(upper_bound(field) for field in timeouts), MAX_KEEP_ALIVE_S]

    async def use(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        fired: list[bool] = []
        handle = loop.call_later(seconds, fired.append, True)
        async with asyncio.timeout(seconds):
            await asyncio.wait_for(asyncio.sleep(0.01), timeout=seconds)
        handle.cancel()
        assert not fired  # a bound so large it wraps or is NaN fires at once
        assert datetime.now(UTC) + timedelta(seconds=seconds) > datetime.now(UTC)

    for seconds in longest:
        asyncio.run(use(seconds))


def test_longest_keep_alive_and_request_timeout_serve_requests() -> None:
    settings = Settings(
        model="fake/model",
        warmup=False,
        keep_alive="168h",
        request_timeout_s=upper_bound("request_timeout_s"),
        max_queue=upper_bound("max_queue"),
    )
    fake = fake_service(settings)
    with local_client(fake.app()) as client:
        wait_healthy(client, timeout_s=10)
        response = post(client, PNG)
        assert response.status_code == 200, response.text  # overflowing timedelta: 500
        deadline = time.monotonic() + 5
        while (health := client.get("/health").json())["expires_at"] is None:
            assert time.monotonic() < deadline, health
            time.sleep(0.02)
    expires = datetime.fromisoformat(health["expires_at"])
    assert abs(expires - datetime.now(UTC) - timedelta(days=7)) < timedelta(minutes=1)


def test_largest_upload_limit_reads_uploads_spooled_to_disk() -> None:
    limit = upper_bound("max_upload_bytes")
    assert limit * 4 // 3 + FORM_OVERHEAD_BYTES < sys.maxsize  # the body limit stays an index
    fake = fake_service(Settings(model="fake/model", warmup=False, max_upload_bytes=limit))
    big = PNG + b"\0" * (2 * 1024 * 1024)  # past Starlette's 1 MB in-memory spool
    with local_client(fake.app()) as client:
        wait_healthy(client, timeout_s=10)
        response = post(client, big)
    # `upload.read(limit + 1)` reserves the limit: at a terabyte that was a 500 (MemoryError)
    assert response.status_code == 200, response.text


def test_largest_pixel_limit_is_not_refused_by_pillow() -> None:
    limit = upper_bound("max_image_pixels")
    side = math.isqrt(limit)  # 9459 x 9459 = 89,472,681: just under Pillow's own cap

    def png(width: int, height: int) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            crc = zlib.crc32(kind + body)
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

        header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
        pixels = zlib.compress(b"\0" * 64)  # far too few: a truncated image
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)

    with pytest.raises(BadInput) as caught:
        decode_image(png(side, side), max_pixels=limit)
    assert not isinstance(caught.value, TooLarge), caught.value  # only the data is wrong
    with pytest.raises(TooLarge):
        decode_image(png(side + 1, side + 1), max_pixels=limit)


def test_largest_cache_budget_keeps_entries() -> None:
    cache: FeatureCache[np.ndarray] = FeatureCache(
        max_entries=upper_bound("image_cache_entries"),
        max_bytes=upper_bound("image_cache_mb") * 1024 * 1024,
    )
    cache.put("a", np.zeros((1024, 16), np.float32))
    assert cache.get("a") is not None


def test_longest_url_timeouts_and_largest_limit_download(monkeypatch: pytest.MonkeyPatch) -> None:
    class Image(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Image)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = load(
        monkeypatch,
        SEGMENT_URL_ALLOWLIST="127.0.0.0/8",
        SEGMENT_URL_TIMEOUT_S=str(upper_bound("url_timeout_s")),
        SEGMENT_URL_TOTAL_TIMEOUT_S=str(upper_bound("url_total_timeout_s")),
        SEGMENT_URL_MAX_REDIRECTS=str(upper_bound("url_max_redirects")),
        SEGMENT_MAX_UPLOAD_BYTES=str(upper_bound("max_upload_bytes")),
    )
    try:
        data = asyncio.run(
            fetch_image_bytes(
                f"http://127.0.0.1:{server.server_port}/a.png",
                policy=UrlPolicy(settings.url_allowlist),
                max_bytes=settings.max_upload_bytes,
                timeout_s=settings.url_timeout_s,
                total_timeout_s=settings.url_total_timeout_s,
                max_redirects=settings.url_max_redirects,
            )
        )
    finally:
        server.shutdown()
    assert data == PNG


def test_accepted_lists_match_what_clients_send(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        SEGMENT_ALLOWED_ORIGINS="HTTPS://App.Example:443",
        SEGMENT_URL_ALLOWLIST="10.0.0.1/8, NAS.local",
        SEGMENT_API_TOKEN="s3cret ",
    )
    assert origin_allowed("https://app.example", "127.0.0.1:8000", settings.allowed_origins)
    policy = UrlPolicy(settings.url_allowlist)
    assert policy.permits("x", ipaddress.ip_address("10.200.0.1"))
    assert policy.permits("nas.local", ipaddress.ip_address("192.168.1.2"))
    token = cast(Any, settings.api_token).get_secret_value()
    assert token_ok("Bearer s3cret", token)


def test_every_log_level_works_for_logging_and_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    for level in ("CRITICAL", "error", "Warning", "info", "debug"):
        name = load(monkeypatch, SEGMENT_LOG_LEVEL=level).log_level
        assert isinstance(logging.getLevelNamesMapping()[name.upper()], int)
        assert name.lower() in uvicorn.config.LOG_LEVELS
