"""Linux only, at process start: run MLX's CPU backend on OpenBLAS instead of its reference BLAS.

The Linux `mlx[cpu]` wheel calls a bundled reference BLAS: float32 matmul ran at ~3 GFLOP/s on
this 2-core machine, ~60-90 GFLOP/s with OpenBLAS loaded first. opencv-python-headless, already a
dependency, ships an OpenBLAS exporting the standard cblas symbols, so `python -m app` re-executes
itself once with it in LD_PRELOAD. This is launch packaging, not pipeline: macOS (Metal and
Accelerate) is never touched, and SEGMENT_BLAS=bundled turns it off.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from app.runtime.device import DevicePolicy, gpu_backend

MARKER = "SEGMENT_BLAS_PRELOADED"  # set on the re-executed process: never loop


def find_openblas() -> Path | None:
    """OpenBLAS from the opencv wheel next to us, else a system one, else None."""
    spec = importlib.util.find_spec("cv2")
    if spec is not None and spec.origin:
        site = Path(spec.origin).resolve().parent.parent
        for libs in ("opencv_python_headless.libs", "opencv_python.libs"):
            found = sorted((site / libs).glob("libopenblas*.so*"))
            if found:
                return found[0]
    system = ctypes.util.find_library("openblas")
    return Path(system) if system and Path(system).is_absolute() else None


def preload_environment(
    environ: Mapping[str, str],
    platform: str,
    library: Path | None,
    mode: Literal["auto", "bundled"] = "auto",
    device: Literal["auto", "gpu", "cpu"] = "auto",
    gpu_backend: str | None = None,
) -> dict[str, str] | None:
    """The environment to re-execute with, or None to run as we are (`mode`: SEGMENT_BLAS;
    `device`: SEGMENT_DEVICE; `gpu_backend`: "cuda" when MLX's CUDA backend is installed)."""
    if not platform.startswith("linux") or library is None:
        return None
    if device == "gpu" or (device == "auto" and gpu_backend is not None):
        return None  # the model runs on the GPU: the CPU's BLAS is not on its path
    if mode == "bundled" or environ.get(MARKER):
        return None
    preload = environ.get("LD_PRELOAD", "")
    if "openblas" in preload:
        return None  # the user already chose a BLAS
    return {
        **environ,
        "LD_PRELOAD": f"{library}:{preload}" if preload else str(library),
        MARKER: str(library),
    }


def restart_with_openblas_if_needed(blas: Literal["auto", "bundled"], device: DevicePolicy) -> None:
    """Linux, MLX on the CPU: re-execute this very command once with OpenBLAS preloaded (it
    must be loaded before MLX's own BLAS, so only a fresh process can have it); else return."""
    environment = preload_environment(
        os.environ, sys.platform, find_openblas(), blas, device, gpu_backend()
    )
    if environment is not None:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
