"""Stages for continuous batching: throughput at several requests at once (the tiny model, and
a mid-size model whose steps are bound by reading real-size weights), the CLI on a folder of
images with and without --batch, and per_class against a joint prompt.

The requests are the demo's (random weights): the output grammar writes one object per class,
so every request of `PROMPT` decodes three objects (~66 tokens) and the timings compare like
with like. Each model's throughput runs in a child process of its own: its memory (the mid-size
model holds ~3.5 GB of float32 weights) and its BLAS threads are its own.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from scripts.bench.common import ROOT, run_child, summary
from scripts.harness import blas_environment

PROMPT = "cat ; dog ; car"  # three classes: the demo writes one object each
CONCURRENCY = (1, 2, 4, 8)
MID_SIZE_LAYERS = (2, 1)  # text, vision: real widths and vocabulary, few layers
CHILD_TIMEOUT_S = 30 * 60
CLI_IMAGES = 16


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A different noisy JPEG per seed: no two requests share the vision cache."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# -- throughput ---------------------------------------------------------------------------
def throughput(tiny_dir: Path, scratch: Path, quick: bool) -> dict[str, Any]:
    """Parent side: the tiny model and the mid-size one, each in a child process."""
    from scripts.real_size_model import Depth, ensure_checkpoint

    mid_dir = ensure_checkpoint(
        ROOT / "models" / "real-size-random", 224, 0, Depth(*MID_SIZE_LAYERS)
    )
    rounds = 1 if quick else 2
    results: dict[str, Any] = {}
    for name, model_dir in (("tiny", tiny_dir), ("mid-size", mid_dir)):
        print(f"  {name} ...", flush=True)
        results[name] = run_child(
            "throughput",
            {"model_dir": str(model_dir), "vae": str(tiny_dir / "vae-oid.npz"), "rounds": rounds},
            env=blas_environment(os.environ, preloaded=True),
            log=scratch / f"throughput_{name}.log",
            timeout_s=CHILD_TIMEOUT_S,
        )
    return results


def throughput_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Child side: N requests at once for N in CONCURRENCY, over a real socket; each N's wall
    time against one request alone, requests per second and each request's latency."""
    from app.api.app import create_app
    from app.config import Settings
    from app.runtime.pool import create_worker
    from scripts.harness import live_server, wait_healthy

    settings = Settings(model=spec["model_dir"], vae_path=Path(spec["vae"]))
    rows = []
    with live_server(create_app(settings, create_worker(settings))) as url:
        wait_healthy(url, 600)

        def one(seed: int) -> float:
            started = time.perf_counter()
            response = httpx.post(
                f"{url}/segment",
                data={"prompt": PROMPT},
                files={"image_file": ("p.jpg", photo(seed))},
                timeout=1200,
            )
            assert response.status_code == 200 and len(response.json()["objects"]) == 3
            return time.perf_counter() - started

        one(10_000)  # warm-up: the first request's caches are not counted
        seed = 0
        for n in CONCURRENCY:
            walls, latencies = [], []
            for _ in range(spec["rounds"]):
                started = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    latencies += list(pool.map(one, range(seed, seed + n)))
                walls.append(time.perf_counter() - started)
                seed += n
            wall = statistics.median(walls)
            rows.append(
                {
                    "at_once": n,
                    "wall_s": round(wall, 3),
                    "requests_per_s": round(n / wall, 3),
                    "latency_s": summary(latencies),
                }
            )
    alone = float(rows[0]["wall_s"])  # type: ignore[arg-type]
    for row in rows:
        row["wall_vs_alone"] = round(float(row["wall_s"]) / alone, 2)  # type: ignore[arg-type]
    return {"model": Path(spec["model_dir"]).name, "max_batch": settings.max_batch, "rows": rows}


# -- the CLI on a folder -------------------------------------------------------------------
def cli_batch(tiny_dir: Path, quick: bool) -> dict[str, Any]:
    """`python -m app segment` on CLI_IMAGES images, as a user runs it (its own process, its
    OpenBLAS re-exec included): --batch 1 against the default."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = []
        for index in range(CLI_IMAGES):
            path = folder / f"photo-{index:02d}.jpg"
            path.write_bytes(photo(index))
            images.append(str(path))
        env = {
            **os.environ,
            "SEGMENT_MODEL": str(tiny_dir),
            "SEGMENT_VAE_PATH": str(tiny_dir / "vae-oid.npz"),
        }
        for label, extra in (("--batch 1", ["--batch", "1"]), ("default", [])):
            walls = []
            for _ in range(1 if quick else 2):
                out = folder / "out"
                started = time.perf_counter()
                command = [sys.executable, "-m", "app", "segment", *images, "--prompt", PROMPT]
                done = subprocess.run(
                    [*command, "--out", str(out), *extra],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                walls.append(time.perf_counter() - started)
                assert done.returncode == 0, done.stderr[-2000:]
                assert len(list(out.glob("*.json"))) == CLI_IMAGES
            rows.append({"run": label, "wall_s": round(statistics.median(walls), 2)})
    from app.config import Settings

    return {"images": CLI_IMAGES, "default_batch": Settings().max_batch, "rows": rows}


# -- every class on its own -----------------------------------------------------------------
def per_class(tiny_dir: Path, repeats: int) -> dict[str, Any]:
    """The same image and three classes, as one joint prompt and with per_class=true."""
    from app.api.app import create_app
    from app.config import Settings
    from app.runtime.pool import create_worker
    from scripts.harness import local_client, wait_healthy

    settings = Settings(model=str(tiny_dir), vae_path=tiny_dir / "vae-oid.npz")
    rows = []
    with local_client(create_app(settings, create_worker(settings))) as client:
        wait_healthy(client)
        for label, form in (("joint prompt", {}), ("per_class=true", {"per_class": "true"})):
            walls, objects = [], []
            for index in range(repeats + 1):
                started = time.perf_counter()
                response = client.post(
                    "/segment",
                    data={"prompt": PROMPT, **form},
                    files={"image_file": ("p.jpg", photo(500 + index))},
                )
                assert response.status_code == 200, response.text
                if index:  # the first warms up
                    walls.append((time.perf_counter() - started) * 1000)
                    objects.append(len(response.json()["objects"]))
            rows.append(
                {
                    "run": label,
                    "wall_ms": summary(walls),
                    "objects": statistics.median(objects),
                    "timings_ms": response.json()["timings_ms"],
                }
            )
    return {"prompt": PROMPT, "rows": rows}
