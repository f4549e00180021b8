"""What every stage shares: summaries, the test photo, the machine's description, child runs."""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.runtime.blas import MARKER

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "scripts.benchmark"  # the one entry; a stage's child processes run it again
GIB = 1024**3
PACKAGES = ("mlx", "mlx-vlm", "numpy", "fastapi", "pillow", "opencv-python-headless")


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median and range, in the unit given, rounded for reading."""
    return {
        "median": round(statistics.median(samples), 2),
        "min": round(min(samples), 2),
        "max": round(max(samples), 2),
        "runs": len(samples),
    }


def photo_jpeg(
    width: int, height: int, *, noise: float = 12.0, quality: int = 90, seed: int = 0
) -> bytes:
    """A photo-like JPEG: smooth gradients plus Gaussian noise (fine texture), so it compresses,
    decodes and blurs like a real photo does."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200  # (H, W, 3)
    pixels = base + np.random.default_rng(seed).normal(0, noise, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine(packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """Enough to tell whether two result files are comparable, and how busy the machine was."""
    import mlx.core as mx

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "mlx_device": str(mx.default_device()),
        "cpu_blas": os.environ.get(MARKER, "bundled (MLX's reference BLAS)"),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in packages},
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine since boot, of this process with its threads and
    waited-for children); None where there is no /proc/stat (macOS)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    fields = [int(f) for f in stat.read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = os.times()
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy, own.user + own.system + own.children_user + own.children_system


def cpu_use(before: tuple[float, float] | None, wall_s: float) -> dict[str, float]:
    """Cores this process used since `before`, and cores everything else took meanwhile.

    The machine may be shared: `other_cores` well above 0 means the timing is disturbed (with
    2 cores, a second busy process makes BLAS threads wait on each other, not just halves speed).
    """
    now = cpu_seconds()
    if before is None or now is None or wall_s <= 0:
        return {}
    busy, own = (n - b for n, b in zip(now, before, strict=True))
    return {
        "own_cores": round(own / wall_s, 2),
        "other_cores": round(max(busy - own, 0) / wall_s, 2),
    }


def run_child(
    stage: str,
    spec: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    log: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """One piece of a stage in a fresh interpreter, `python -m scripts.benchmark --stage STAGE
    --child SPEC --result FILE`, with exactly the environment given (its BLAS, say).

    Returns {"status": "ok", **the numbers it wrote}, or a status saying it failed (with the
    tail of its log) or ran past `timeout_s` (subprocess.run has killed it then).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", ENTRY, "--stage", stage, "--child", json.dumps(spec)]
    try:
        with log.open("w") as out:  # a file, not a pipe: a full pipe would stall the child
            done = subprocess.run(
                [*command, "--result", str(result)],
                cwd=ROOT,
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "timeout_s": timeout_s, "log": str(log)}
    if done.returncode == 0 and result.is_file():
        return {"status": "ok", **json.loads(result.read_text())}
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"status": f"failed (exit {done.returncode})", "log_tail": tail, "log": str(log)}
