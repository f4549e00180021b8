"""Benchmark the VAE mask decoder: each formulation, compiled or not, per object, and NumPy.

    .venv/bin/python -m scripts.bench_vae [--sizes 1 4 8 16] [--repeats 7] [--openblas]

Random real-size checkpoint (`scripts.random_vae`), random codes, median ms per request after
one warm-up call (up to --repeats calls, at least 3, within --budget seconds per cell).
`--openblas` runs the same bench again in a child process with an OpenBLAS that exports
`cblas_sgemm` preloaded (MLX's CPU wheel bundles a slow reference BLAS); nothing in `app`
depends on that library. A harness can import `run(...) -> list[dict]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from app.model.vae import MaskDecoder
from app.runtime.blas import find_openblas
from scripts.random_vae import write_random_vae

Decode = Callable[[np.ndarray], np.ndarray]


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


def _variants(path: Path) -> dict[str, Decode]:
    dec = {f: MaskDecoder.load(path, upsample=f) for f in ("conv", "matmul")}

    def compiled(f: str) -> Decode:
        fwd = mx.compile(partial(dec[f]._model, matmul=f == "matmul"))  # retraces per new N
        return lambda codes: np.array(fwd(mx.array(codes.astype(np.int32))))

    def per_object(d: MaskDecoder) -> Decode:  # one decode call per object, as seed projects do
        return lambda codes: np.concatenate([d.decode(codes[i : i + 1]) for i in range(len(codes))])

    with np.load(path) as npz:
        checkpoint = dict(npz)
    numpy_decoder = NumpyDecoder(checkpoint)
    baselines: dict[str, Decode] = {}
    if importlib.util.find_spec("jax") is not None:
        from scripts.jax_vae import make_jax_decoder

        baselines["jax/XLA jit (batched)"] = make_jax_decoder(checkpoint)
    return {
        "conv (batched)": dec["conv"].decode,
        "matmul (batched)": dec["matmul"].decode,
        "conv + mx.compile": compiled("conv"),
        "matmul + mx.compile": compiled("matmul"),
        "conv, one call per object": per_object(dec["conv"]),
        "matmul, one call per object": per_object(dec["matmul"]),
        "numpy (batched)": numpy_decoder,
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


def run(
    sizes: Sequence[int] = (1, 4, 8, 16), repeats: int = 7, budget_s: float = 1.5
) -> list[dict[str, Any]]:
    """Median/min ms per decode request for every variant and batch size (after one warm-up
    call), plus the max abs difference from batched conv (a sanity check, not the test)."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = _variants(write_random_vae(Path(tmp) / "vae-oid.npz"))
    blas = Path(os.environ.get("LD_PRELOAD", "")).name or "bundled"
    for n in sizes:
        codes = np.random.default_rng(n).integers(0, 128, size=(n, 16))
        reference = variants["conv (batched)"](codes)
        for name, decode in variants.items():
            err = float(np.abs(decode(codes) - reference).max())  # also the warm-up call
            times = _times_ms(decode, codes, repeats, budget_s)
            rows.append(
                {
                    "variant": name,
                    "n": n,
                    "median_ms": round(statistics.median(times), 2),
                    "min_ms": round(min(times), 2),
                    "max_abs_diff_vs_conv": err,
                    "device": str(mx.default_device()),
                    "blas": blas,
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """Rows -> a markdown table: one line per variant, "median (min)" ms per batch size."""
    sizes = sorted({r["n"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    ms = {(r["variant"], r["n"]): f"{r['median_ms']:.1f} ({r['min_ms']:.1f})" for r in rows}
    lines = [f"**{title}**: median (min) ms per request", ""]
    lines.append("| variant | " + " | ".join(f"N={n}" for n in sizes) + " |")
    lines.append("|---" * (len(sizes) + 1) + "|")
    lines += [f"| {v} | " + " | ".join(ms[v, n] for n in sizes) + " |" for v in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI: print the markdown table(s) and the JSON rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=7, help="most timed calls per cell")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per cell, >= 3 calls")
    parser.add_argument("--json", action="store_true", help="print only the JSON rows")
    parser.add_argument("--openblas", action="store_true", help="also run with OpenBLAS preloaded")
    args = parser.parse_args(argv)

    rows = run(args.sizes, args.repeats, args.budget)
    if args.json:
        print(json.dumps(rows))
        return
    print(markdown(rows, f"MLX {rows[0]['device']}, BLAS: {rows[0]['blas']}"))
    if args.openblas:
        lib = find_openblas()
        if lib is None:
            print("\nno OpenBLAS exporting cblas_sgemm found; skipped the preloaded run")
        else:
            cmd = [sys.executable, "-m", "scripts.bench_vae", "--json", "--repeats"]
            cmd += [str(args.repeats), "--budget", str(args.budget), "--sizes"]
            cmd += map(str, args.sizes)
            env = {**os.environ, "LD_PRELOAD": str(lib)}
            child = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            preloaded = json.loads(child.stdout.strip().splitlines()[-1])
            print("\n" + markdown(preloaded, f"MLX {rows[0]['device']}, BLAS: {lib}"))
            rows += preloaded
    print("\n" + json.dumps(rows))


if __name__ == "__main__":
    main()
