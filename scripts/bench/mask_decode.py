"""Stage `mask_decode`: the VAE mask decoder, every formulation, under each CPU BLAS.

Random real-size checkpoint (`app.model.random_vae`), random codes, N objects per request: direct
convolutions vs matmuls, with and without `mx.compile`, batched vs one call per object, plus a
NumPy baseline and JAX/XLA when installed (`pip install -e '.[bench]'`). Which BLAS a process
uses is fixed when it starts, so each BLAS gets its own child process.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime.blas import find_openblas
from scripts.bench.common import run_child
from scripts.harness import blas_environment

Decode = Callable[[np.ndarray], np.ndarray]
SIZES = (1, 4, 8, 16)
BUDGET_S = 1.5  # per (variant, N) cell; never fewer than 3 timed calls
CHILD_TIMEOUT_S = 20 * 60
SETUPS = {"bundled BLAS": False, "OpenBLAS preloaded": True}  # name -> OpenBLAS preloaded


def mask_decode(repeats: int, scratch: Path) -> dict[str, Any]:
    """Parent side: one child process per BLAS; a setup that cannot run says why."""
    results: dict[str, Any] = {}
    for name, preloaded in SETUPS.items():
        if preloaded and find_openblas() is None:
            results[name] = {"status": "skipped: no OpenBLAS exporting cblas_sgemm found"}
            continue
        print(f"  {name} ...", flush=True)
        results[name] = run_child(
            "mask_decode",
            {"repeats": repeats, "sizes": list(SIZES), "budget_s": BUDGET_S},
            env=blas_environment(os.environ, preloaded),
            log=scratch / f"mask_decode_{'openblas' if preloaded else 'bundled'}.log",
            timeout_s=CHILD_TIMEOUT_S,
        )
    return results


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Child side: time every variant at every N under this process's BLAS, with MLX's device
    and buffer cache set up as the service sets them."""
    import sys

    import mlx.core as mx

    from app.config import Settings
    from app.runtime.device import use_device

    settings = Settings()
    use_device(settings.device, sys.platform, settings.cpu_cache_mb)
    rows = decode_rows(spec["sizes"], spec["repeats"], spec["budget_s"])
    return {
        "device": str(mx.default_device()),
        "blas": Path(os.environ.get("LD_PRELOAD", "")).name or "bundled",
        "rows": rows,
    }


def decode_rows(sizes: Sequence[int], repeats: int, budget_s: float) -> list[dict[str, Any]]:
    """Median/min ms per decode request for every variant and N (after one warm-up call), plus
    the max abs difference from batched conv (a sanity check, not the test)."""
    import tempfile

    import mlx.core as mx

    from app.model.random_vae import write_random_vae

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = _variants(write_random_vae(Path(tmp) / "vae-oid.npz"))
    for n in sizes:
        codes = np.random.default_rng(n).integers(0, 128, size=(n, 16))
        reference = variants["conv (batched)"](codes)
        for name, decode in variants.items():
            mx.clear_cache()  # each variant with the cache to itself, as in the service
            err = float(np.abs(decode(codes) - reference).max())  # also the warm-up call
            times = _times_ms(decode, codes, repeats, budget_s)
            rows.append(
                {
                    "variant": name,
                    "n": n,
                    "median_ms": round(statistics.median(times), 2),
                    "min_ms": round(min(times), 2),
                    "max_abs_diff_vs_conv": err,
                }
            )
    return rows


def _variants(path: Path) -> dict[str, Decode]:
    import mlx.core as mx

    from app.model.vae import MaskDecoder, convert_checkpoint

    with np.load(path) as npz:
        checkpoint = dict(npz)
    model = convert_checkpoint(checkpoint)
    decoders = {f: MaskDecoder(model, f) for f in ("conv", "matmul")}

    def compiled(formulation: str) -> Decode:
        forward = mx.compile(partial(model, matmul=formulation == "matmul"))  # retraces per N
        return lambda codes: np.array(forward(mx.array(codes.astype(np.int32))))

    def per_object(decoder: MaskDecoder) -> Decode:  # one call per object, as seed projects do
        return lambda codes: np.concatenate(
            [decoder.decode(codes[i : i + 1]) for i in range(len(codes))]
        )

    baselines: dict[str, Decode] = {}
    if importlib.util.find_spec("jax") is not None:
        from scripts.bench.jax_vae import make_jax_decoder

        baselines["jax/XLA jit (batched)"] = make_jax_decoder(checkpoint)
    return {
        "conv (batched)": decoders["conv"].decode,
        "matmul (batched)": decoders["matmul"].decode,
        "conv + mx.compile": compiled("conv"),
        "matmul + mx.compile": compiled("matmul"),
        "conv, one call per object": per_object(decoders["conv"]),
        "matmul, one call per object": per_object(decoders["matmul"]),
        "numpy (batched)": NumpyDecoder(checkpoint),
        **baselines,
    }


def _times_ms(decode: Decode, codes: np.ndarray, repeats: int, budget_s: float) -> list[float]:
    """Up to `repeats` timed calls, fewer (never under 3) once `budget_s` is spent."""
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        decode(codes)  # returns NumPy: MLX has evaluated inside the timing
        times.append((time.perf_counter() - start) * 1e3)
    return times


class NumpyDecoder:
    """The same decoder in plain NumPy (channels-last, im2col matmuls): a baseline, not a
    reference; `tests/test_vae.py` holds the independent definition-based reference."""

    def __init__(self, ckpt: dict[str, np.ndarray]):
        p = {k: np.asarray(v, dtype=np.float32) for k, v in ckpt.items()}
        self.codebook = p["_vq_vae._embedding"]  # (128, D)
        self.w: dict[str, np.ndarray] = {}  # matmul-ready weights, (K, O)
        self.k: dict[str, int] = {}  # Conv2d kernel sizes
        for key in [
            k.removesuffix(".weight")
            for k in p
            if k.startswith("decoder.") and k.endswith("weight")
        ]:
            if key not in ("decoder.4", "decoder.6", "decoder.8", "decoder.10"):
                o, c, k, _ = p[f"{key}.weight"].shape  # Conv2d (O, C, k, k)
                self.k[key] = k
                # (k, k, C, O) -> (k*k*C, O), matching the im2col order (dy, dx, C)
                self.w[key] = p[f"{key}.weight"].transpose(2, 3, 1, 0).reshape(k * k * c, o)
            else:
                c, o, _, _ = p[f"{key}.weight"].shape  # ConvTranspose2d (C, O, 4, 4)
                # Window (dy, dx) feeds output phase (py, px) via tap 3-p-2d (see app.model.vae).
                t = p[f"{key}.weight"][:, :, ::-1, ::-1].reshape(
                    c, o, 2, 2, 2, 2
                )  # (C,O,dy,py,dx,px)
                self.w[key] = t.transpose(2, 4, 0, 3, 5, 1).reshape(
                    4 * c, 4 * o
                )  # (dy·dx·C, py·px·O)
        self.b = {k.removesuffix(".bias"): v for k, v in p.items() if k.endswith(".bias")}

    def _conv(self, x: np.ndarray, key: str) -> np.ndarray:
        k = self.k[key]
        if k > 1:
            _, h, wd, _ = x.shape
            xp = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
            x = np.concatenate(
                [xp[:, dy : dy + h, dx : dx + wd] for dy in range(k) for dx in range(k)], axis=-1
            )  # (N, H, W, k*k*C)
        return x @ self.w[key] + self.b[key]

    def _conv_transpose(self, x: np.ndarray, key: str) -> np.ndarray:
        n, h, wd, _ = x.shape
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        win = np.concatenate(
            [xp[:, dy : dy + h + 1, dx : dx + wd + 1] for dy in (0, 1) for dx in (0, 1)], axis=-1
        )  # (N, H+1, W+1, 4*C)
        y = (win @ self.w[key]).reshape(n, h + 1, wd + 1, 2, 2, -1)  # (.., py, px, O)
        out = np.empty((n, h, 2, wd, 2, y.shape[-1]), np.float32)
        for py in (0, 1):
            for px in (0, 1):
                out[:, :, py, :, px] = y[:, py : py + h, px : px + wd, py, px]
        return out.reshape(n, 2 * h, 2 * wd, -1) + self.b[key]  # (N, 2H, 2W, O)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        x = self.codebook[codes].reshape(len(codes), 4, 4, -1)  # (N, 4, 4, D) row-major grid
        x = np.maximum(self._conv(x, "decoder.0"), 0)
        for block in ("decoder.2.net", "decoder.3.net"):
            y = np.maximum(self._conv(x, f"{block}.0"), 0)
            y = np.maximum(self._conv(y, f"{block}.2"), 0)
            x = x + self._conv(y, f"{block}.4")
        for key in ("decoder.4", "decoder.6", "decoder.8", "decoder.10"):
            x = np.maximum(self._conv_transpose(x, key), 0)
        return self._conv(x, "decoder.12")[..., 0]  # (N, 64, 64)
