"""Where MLX runs: the GPU when it has one (Metal on a Mac, CUDA on Linux + NVIDIA), else the CPU.

SEGMENT_DEVICE=auto|gpu|cpu. The choice is applied on the worker thread, before loading, so
the model, its streams and every request live on one device. The decision itself is a pure
function, so every branch is testable on a machine without a GPU.
"""

from __future__ import annotations

import importlib.metadata
from typing import Literal

DevicePolicy = Literal["auto", "gpu", "cpu"]
CUDA_BACKENDS = ("mlx-cuda-13", "mlx-cuda-12")  # the wheels `pip install mlx[cuda13]` brings


class NoGpu(FileNotFoundError):
    """SEGMENT_DEVICE=gpu where MLX has no GPU: an expected set-up problem, not a crash."""


def choose_device(policy: DevicePolicy, gpu_available: bool, platform: str) -> str:
    """ "gpu" or "cpu" for the policy, or NoGpu saying how to get one."""
    if policy == "cpu" or (policy == "auto" and not gpu_available):
        return "cpu"
    if gpu_available:
        return "gpu"
    how = (
        "Install MLX's CUDA backend: make install BACKEND=cuda13 (NVIDIA driver for CUDA 13), "
        "or set SEGMENT_DEVICE=auto to run on the CPU."
        if platform.startswith("linux")
        else "MLX sees no Metal GPU here; set SEGMENT_DEVICE=auto or cpu."
    )
    raise NoGpu(f"SEGMENT_DEVICE=gpu, but this MLX build has no GPU backend. {how}")


def use_device(policy: DevicePolicy, platform: str) -> str:
    """Make MLX's default device the chosen one (call on the MLX worker thread)."""
    import mlx.core as mx

    chosen = choose_device(policy, bool(mx.is_available(mx.gpu)), platform)
    mx.set_default_device(mx.gpu if chosen == "gpu" else mx.cpu)
    return chosen


def gpu_backend() -> str | None:
    """ "metal" or "cuda" for the GPU MLX would use, None without one (no MLX import)."""
    import sys

    if sys.platform == "darwin":
        return "metal"
    for name in CUDA_BACKENDS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return "cuda"
    return None
