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


def use_device(policy: DevicePolicy, platform: str, cpu_cache_mb: int | None = None) -> str:
    """Make MLX's default device the chosen one (call on the MLX worker thread); on the CPU,
    give MLX's buffer cache `cpu_cache_mb` (see `keep_cpu_buffers`)."""
    import mlx.core as mx

    chosen = choose_device(policy, bool(mx.is_available(mx.gpu)), platform)
    mx.set_default_device(mx.gpu if chosen == "gpu" else mx.cpu)
    if chosen == "cpu" and cpu_cache_mb is not None:
        keep_cpu_buffers(cpu_cache_mb)
    return chosen


def keep_cpu_buffers(megabytes: int) -> None:
    """MLX keeps freed buffers for reuse up to a cache limit: on Metal its default is the
    memory limit, on the CPU backend only 32 MB, so work whose buffers add up to more (the mask
    decoder at 16 masks: ~60 MB) allocates fresh memory, page faults and all, on every call
    (measured: 35 ms instead of 19). The cache is cleared when a model is unloaded."""
    import mlx.core as mx

    mx.set_cache_limit(megabytes * 1024 * 1024)


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
