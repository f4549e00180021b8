"""Which float dtype the weights run in: the checkpoint's, or float32 on the MLX CPU backend.

On the CPU backend bfloat16/float16 matmuls have no BLAS path and run several times slower than
float32 (measured here: ~5.8 s vs ~0.74 s per token for PaliGemma 2 3B), so float weights are
widened when memory allows. On Metal the checkpoint's dtype (and quantisation) is kept: there
half precision is the fast path and halves the bytes read per token.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import mlx.core as mx
from mlx.utils import tree_flatten

log = logging.getLogger(__name__)

DtypePolicy = Literal["auto", "float32", "checkpoint"]
# Widen only if the float32 weights would take at most this share of physical memory.
MAX_SHARE_OF_MEMORY = 0.6


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _arrays(model: Any) -> list[Any]:
    """Every parameter array (tree_flatten yields (dotted name, array) pairs)."""
    return [pair[1] for pair in tree_flatten(model.parameters())]


def half_float_bytes(model: Any) -> int:
    """Bytes of the bfloat16/float16 parameters (what widening would double)."""
    return sum(a.nbytes for a in _arrays(model) if a.dtype in (mx.bfloat16, mx.float16))


def float32_after_widening_bytes(model: Any) -> int:
    return sum(a.nbytes for a in _arrays(model)) + half_float_bytes(model)


def choose_float32(policy: DtypePolicy, device: str, widened_bytes: int, memory: int) -> bool:
    """The decision alone, pure, so every branch is testable without a big model."""
    if policy == "float32":
        return True
    if policy == "checkpoint" or device != "cpu":
        return False
    return widened_bytes <= MAX_SHARE_OF_MEMORY * memory


def apply_dtype_policy(model: Any, policy: DtypePolicy, device: str) -> str:
    """Widen half-precision float weights to float32 if the policy says so; returns what ran."""
    half = half_float_bytes(model)
    if half == 0:
        return "checkpoint (no half-precision weights)"
    widened = float32_after_widening_bytes(model)
    if not choose_float32(policy, device, widened, physical_memory_bytes()):
        log.info("weights keep the checkpoint's dtype (policy %s, device %s)", policy, device)
        return "checkpoint"
    model.set_dtype(mx.float32, lambda dtype: dtype in (mx.bfloat16, mx.float16))
    mx.eval(model.parameters())
    log.info(
        "weights widened to float32 (policy %s, device %s): %.1f GB", policy, device, widened / 1e9
    )
    return "float32"
