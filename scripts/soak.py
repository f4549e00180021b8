"""Soak the service: many mixed good/bad requests, concurrently; report memory, statuses, latency.

    python -m scripts.soak [--requests 1000] [--concurrency 8] [--url http://127.0.0.1:8000]

Without --url it builds the tiny random model, starts `python -m app` on a free loopback port and
stops it afterwards. Loopback only; bounded in count and time. Exit status 1 when any request got
a 5xx or no answer, or when the server's RSS grew more than --max-growth after warm-up: the first
half of the requests, long enough for what fills on purpose (the vision feature cache, MLX's
buffer cache, a batch's buffers at every size) to be full; a leak keeps growing after that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def request_mix() -> list[tuple[str, dict[str, str], dict[str, tuple[str, bytes]] | None]]:
    """(name, form, files): half good requests, half each kind of bad one, in a fixed cycle."""
    good = {"prompt": "cat ; dog", "max_new_tokens": "24"}
    photo, small = _png(640, 480, 0), _png(64, 48, 1)
    return [
        ("good 640x480", good, {"image_file": ("a.png", photo)}),
        ("not an image", good, {"image_file": ("a.png", b"%PDF-1.7 not an image")}),
        ("good 64x48 detect", {**good, "prompt": "detect car"}, {"image_file": ("b.png", small)}),
        ("empty prompt", {**good, "prompt": "  "}, {"image_file": ("a.png", small)}),
        ("good rle", {**good, "mask_format": "rle"}, {"image_file": ("a.png", small)}),
        ("truncated", good, {"image_file": ("a.png", photo[: len(photo) // 3])}),
        ("good polygon", {**good, "mask_format": "polygon"}, {"image_file": ("a.png", small)}),
        ("no image", good, None),
    ]


@dataclass
class Report:
    requests: int
    concurrency: int
    seconds: float
    statuses: dict[str, int]
    no_answer: int
    p50_ms: float
    p99_ms: float
    rss_start_mb: float
    rss_after_warmup_mb: float
    rss_end_mb: float
    growth_after_warmup: float

    def passed(self, max_growth: float) -> bool:
        server_errors = sum(n for code, n in self.statuses.items() if code.startswith("5"))
        return not server_errors and not self.no_answer and self.growth_after_warmup <= max_growth


def rss_mb(pid: int) -> float:
    """Resident memory of a process, via ps (Linux and macOS alike)."""
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
    return int(out.stdout.strip() or 0) / 1024


async def soak(url: str, pid: int, total: int, concurrency: int, deadline_s: float) -> Report:
    mix = request_mix()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    no_answer = 0
    warmup = max(total // 2, concurrency)
    rss_start = rss_mb(pid)
    rss_after_warmup = rss_start
    started = time.monotonic()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal no_answer, rss_after_warmup
        while not queue.empty() and time.monotonic() - started < deadline_s:
            index = queue.get_nowait()
            _, form, files = mix[index % len(mix)]
            sent = time.perf_counter()
            try:
                response = await client.post(f"{url}/segment", data=form, files=files)
                statuses[str(response.status_code)] += 1
                latencies.append((time.perf_counter() - sent) * 1000)
            except httpx.HTTPError:
                no_answer += 1
            if index == warmup:
                rss_after_warmup = rss_mb(pid)

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    rss_end = rss_mb(pid)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Report(
        requests=sum(statuses.values()) + no_answer,
        concurrency=concurrency,
        seconds=round(time.monotonic() - started, 1),
        statuses=dict(sorted(statuses.items())),
        no_answer=no_answer,
        p50_ms=round(quantiles[49], 1),
        p99_ms=round(quantiles[98], 1),
        rss_start_mb=round(rss_start, 1),
        rss_after_warmup_mb=round(rss_after_warmup, 1),
        rss_end_mb=round(rss_end, 1),
        growth_after_warmup=round(rss_end / rss_after_warmup - 1, 4),
    )


@contextlib.contextmanager
def tiny_model_server() -> Iterator[tuple[str, int]]:
    """`python -m app` on the tiny random model, on a free loopback port."""
    from app.model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        model = build_tiny_model(Path(tmp) / "tiny")
        env = {
            **os.environ,
            "SEGMENT_MODEL": str(model),
            "SEGMENT_VAE_PATH": str(model / "vae-oid.npz"),
            "SEGMENT_PORT": str(port),
            "SEGMENT_LOG_LEVEL": "warning",
        }
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, process)
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(30)


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy within 120 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=600, help="stop sending after this")
    parser.add_argument("--max-growth", type=float, default=0.05, help="RSS growth after warm-up")
    parser.add_argument("--url", help="a running service (loopback only) instead of the tiny one")
    parser.add_argument("--pid", type=int, help="its process id, for RSS (with --url)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    server: contextlib.AbstractContextManager[tuple[str, int]]
    if args.url:
        if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            parser.error("--url must be a loopback address")
        if not args.pid:
            parser.error("--pid is needed with --url, to measure memory")
        server = contextlib.nullcontext((args.url.rstrip("/"), args.pid))
    else:
        server = tiny_model_server()
    with server as (url, pid):
        report = asyncio.run(soak(url, pid, args.requests, args.concurrency, args.max_seconds))
    print(json.dumps(asdict(report), indent=2))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    ok = report.passed(args.max_growth)
    print("PASS" if ok else "FAIL: 5xx, unanswered requests, or memory growth over the bar")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
