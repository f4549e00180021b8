"""PaliGemma segmentation VQ-VAE decoder (big_vision `vae-oid.npz`) in pure MLX.

PaliGemma emits 16 `<seg###>` codes per object; this decoder turns them into a 64x64 map,
roughly in -1..1, foreground where it is > 0. Skeleton as in mlx-lm: constants -> blocks ->
top module -> load. Nothing here creates an `mx.array` at import: MLX streams are
thread-local, so load and decode both run on the service's MLX worker thread.

Two formulations of the same forward pass on the same weights: "conv" calls `mx.conv2d` and
`mx.conv_transpose2d`; "matmul" turns every convolution into one matmul plus slicing, because
MLX's CPU backend runs transposed convolutions as a direct loop that no BLAS speeds up, while
its matmuls are as fast as the BLAS it finds. `MaskDecoder.load` times both once and keeps the
faster, so each backend (Metal, CPU with either BLAS) gets its best without guessing.
"""

from __future__ import annotations

import logging
import math
import time
import zipfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Literal, get_args

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from app.steps.tokens import CODES_PER_MASK

GRID = 4  # the 16 codes form a 4x4 grid, row-major: code i -> row i // 4, column i % 4
MASK_SIZE = 64
HIDDEN = 128
UPSAMPLE_CHANNELS = (128, 64, 32, 16)  # outputs of decoder.4, .6, .8, .10

CODEBOOK_KEY = "_vq_vae._embedding"  # [num_embeddings, embedding_dim]
# PyTorch Conv2d layers: weight [out, in, kH, kW] -> MLX [out, kH, kW, in].
CONV_KEYS = (
    "decoder.0",
    "decoder.2.net.0",
    "decoder.2.net.2",
    "decoder.2.net.4",
    "decoder.3.net.0",
    "decoder.3.net.2",
    "decoder.3.net.4",
    "decoder.12",
)
# PyTorch ConvTranspose2d layers: weight [in, out, kH, kW] -> MLX [out, kH, kW, in].
CONV_TRANSPOSE_KEYS = ("decoder.4", "decoder.6", "decoder.8", "decoder.10")
CONV_PERM = (0, 2, 3, 1)
CONV_TRANSPOSE_PERM = (1, 2, 3, 0)

Formulation = Literal["conv", "matmul"]
Upsample = Literal["auto", "conv", "matmul"]
AUTO_BATCH = 4  # masks per "auto" timing call: a typical request, yet quick at load
AUTO_REPEATS = 2  # timed rounds after one warm-up each; a round that is already decisive ends it
AUTO_DECISIVE = 1.5  # slower/faster ratio beyond which more rounds would not change the choice

log = logging.getLogger(__name__)


# --- convolutions as matmuls (the "matmul" formulation), channels-last, MLX weight layout ------


def _conv_matmul(x: mx.array, w: mx.array, b: mx.array) -> mx.array:
    """Stride-1 "same" conv as one matmul: 1x1 directly, kxk over im2col patches."""
    o, k, _, c = w.shape  # (O, k, k, C)
    if k == 1:
        return x @ w.reshape(o, c).T + b  # (N, H, W, C) @ (C, O)
    _, h, wd, _ = x.shape
    xp = mx.pad(x, [(0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)])
    patches = [xp[:, dy : dy + h, dx : dx + wd] for dy in range(k) for dx in range(k)]
    cols = mx.concatenate(patches, axis=-1)  # (N, H, W, k*k*C) ordered (dy, dx, C)
    return cols @ w.transpose(1, 2, 3, 0).reshape(k * k * c, o) + b  # (ky, kx, C) x O


def _conv_transpose_matmul(x: mx.array, w: mx.array, b: mx.array) -> mx.array:
    """ConvTranspose2d(k=4, s=2, p=1) as one matmul over 2x2 input windows, then interleave.

    Output row 2m+p (phase p in {0, 1}) sums input rows m+p-1+d (d in {0, 1}) through kernel
    tap 3-p-2d; columns likewise. So window (u, v) of the 1-padded input (rows u..u+1, columns
    v..v+1) holds all that output row 2(u-p)+p, column 2(v-q)+q needs, for all four phases
    (p, q): one matmul with K = 4*C_in and 4*C_out columns. Versus 16 per-tap outputs summed by
    shifted adds, this moves much less memory (2x faster with OpenBLAS); the window border
    costs (H+1)(W+1)/HW extra flops.
    """
    o, _, _, c = w.shape  # (O, 4, 4, C)
    n, h, wd, _ = x.shape
    xp = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    cols = [xp[:, dy : dy + h + 1, dx : dx + wd + 1] for dy in (0, 1) for dx in (0, 1)]
    windows = mx.concatenate(cols, axis=-1)  # (N, H+1, W+1, 4*C) ordered (dy, dx, C)
    # Reversed taps 3-k = 2d+p split row-major into (d, p): tap 3-p-2d sits at [d, p].
    taps = w[:, ::-1, ::-1].reshape(o, 2, 2, 2, 2, c)  # (O, dy, py, dx, px, C)
    taps = taps.transpose(1, 3, 5, 2, 4, 0).reshape(4 * c, 4 * o)  # (dy·dx·C, py·px·O)
    y = windows @ taps  # (N, H+1, W+1, 4*O) ordered (py, px, O), contiguous
    # out[n, m, p, j, q] = y[n, m+p, j+q, p, q]: one strided view, one copy in the reshape.
    su, sv = (wd + 1) * 4 * o, 4 * o  # strides of window rows and columns in y
    phases = mx.as_strided(y, (n, h, 2, wd, 2, o), ((h + 1) * su, su, su + 2 * o, sv, sv + o, 1))
    return phases.reshape(n, 2 * h, 2 * wd, o) + b  # (N, H, 2, W, 2, O) -> (N, 2H, 2W, O)


def _layer(layer: nn.Module, x: mx.array, matmul: bool) -> mx.array:
    """Run one decoder layer, with its convolution as a matmul when `matmul` is set."""
    if isinstance(layer, ResBlock):
        return layer(x, matmul)
    if matmul and isinstance(layer, nn.ConvTranspose2d):
        return _conv_transpose_matmul(x, layer.weight, layer.bias)
    if matmul and isinstance(layer, nn.Conv2d):
        return _conv_matmul(x, layer.weight, layer.bias)
    return layer(x)


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv1x1, plus the input; no ReLU after the add."""

    def __init__(self, dims: int):
        super().__init__()
        # List indices match PyTorch's `net.{0,2,4}`; the ReLUs at 1 and 3 hold no weights.
        self.net = [
            nn.Conv2d(dims, dims, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(dims, dims, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(dims, dims, 1),
        ]

    def __call__(self, x: mx.array, matmul: bool = False) -> mx.array:
        y = x
        for layer in self.net:
            y = _layer(layer, y, matmul)
        return x + y


class VQVAEDecoder(nn.Module):
    """Codebook lookup plus big_vision's mask decoder, channels-last."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim  # plain ints
        # Checkpoint `_vq_vae._embedding`: MLX skips attributes starting with "_", hence the rename.
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        upsample: list[nn.Module] = []
        for c_in, c_out in zip((HIDDEN, *UPSAMPLE_CHANNELS[:-1]), UPSAMPLE_CHANNELS, strict=True):
            # PyTorch padding=1 with k=4, s=2 doubles H and W; MLX crops the same way.
            upsample += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        # List indices match PyTorch's `decoder.N` (ReLUs included, they hold no weights).
        self.decoder = [
            nn.Conv2d(embedding_dim, HIDDEN, 1),
            nn.ReLU(),
            ResBlock(HIDDEN),
            ResBlock(HIDDEN),
            *upsample,  # decoder.4 .. decoder.11
            nn.Conv2d(UPSAMPLE_CHANNELS[-1], 1, 1),
        ]

    def __call__(self, codes: mx.array, matmul: bool = False) -> mx.array:
        """Codes (N, 16) -> maps (N, 64, 64); `matmul` picks the formulation, not the result."""
        x = self.embedding(codes)  # (N, 16, D)
        x = x.reshape(codes.shape[0], GRID, GRID, -1)  # (N, 4, 4, D) channels-last, row-major
        for layer in self.decoder:
            x = _layer(layer, x, matmul)  # ends at (N, 64, 64, 1)
        return x[..., 0]  # (N, 64, 64)


def convert_checkpoint(raw: Mapping[str, np.ndarray]) -> VQVAEDecoder:
    """Build the decoder from PyTorch-layout arrays: convert by key, check shapes, load strictly.

    Keys outside the decoder (`encoder.*`, other `_vq_vae.*` state) are ignored; an unknown
    `decoder.*` key is an error because it means a different architecture.
    """
    if CODEBOOK_KEY not in raw:
        raise ValueError(f"missing tensor {CODEBOOK_KEY!r}; is this big_vision's vae-oid.npz?")
    codebook = np.asarray(raw[CODEBOOK_KEY], dtype=np.float32)
    if codebook.ndim != 2:
        raise ValueError(f"{CODEBOOK_KEY}: expected [num_embeddings, dim], got {codebook.shape}")
    model = VQVAEDecoder(*codebook.shape)
    params = dict(tree_flatten(model.parameters()))  # {"decoder.0.weight": array, ...}
    expected = {k: tuple(v.shape) for k, v in params.items()}  # MLX-layout shapes

    weights = {"embedding.weight": codebook}
    layers = [(k, CONV_PERM) for k in CONV_KEYS]
    layers += [(k, CONV_TRANSPOSE_PERM) for k in CONV_TRANSPOSE_KEYS]
    for layer, perm in layers:
        mlx_shape = expected[f"{layer}.weight"]
        # Undo `perm` on the module's MLX shape to get the PyTorch shape the checkpoint must have.
        torch_shape = tuple(mlx_shape[i] for i in np.argsort(perm))
        for name, want, to_mlx in (
            (f"{layer}.weight", torch_shape, perm),
            (f"{layer}.bias", expected[f"{layer}.bias"], (0,)),
        ):
            if name not in raw:
                raise ValueError(f"missing tensor {name!r}; is this big_vision's vae-oid.npz?")
            arr = np.asarray(raw[name], dtype=np.float32)
            if arr.shape != want:
                raise ValueError(f"{name}: expected shape {want} (PyTorch layout), got {arr.shape}")
            weights[name] = np.ascontiguousarray(arr.transpose(to_mlx))

    unknown = sorted(k for k in raw if k.startswith("decoder.") and k not in weights)
    if unknown:
        raise ValueError(f"unexpected decoder tensors {unknown}; not the vae-oid architecture")
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model


class MaskDecoder:
    """Turns PaliGemma's 16 segmentation codes per object into a 64x64 map (> 0 is foreground)."""

    def __init__(self, model: VQVAEDecoder, formulation: Formulation = "conv"):
        if formulation not in get_args(Formulation):
            raise ValueError(
                f"formulation must be one of {get_args(Formulation)}, got {formulation!r}"
            )
        self._model = model
        self._formulation: Formulation = formulation
        self._forward: Callable[[mx.array], mx.array] = partial(
            model, matmul=formulation == "matmul"
        )

    @classmethod
    def load(cls, path: str | Path, upsample: Upsample = "auto") -> MaskDecoder:
        """Load `vae-oid.npz` (PyTorch layout); call on the MLX worker thread.

        `upsample` picks how convolutions run: "conv" (MLX conv ops), "matmul" (matmuls plus
        reshapes), or "auto": time both once on this backend and keep the faster (~1 s on CPU).
        """
        if upsample not in get_args(Upsample):
            raise ValueError(f"upsample must be one of {get_args(Upsample)}, got {upsample!r}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"VAE checkpoint not found at {path}; run `make models` to download vae-oid.npz"
            )
        try:
            npz = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a readable .npz checkpoint: {exc}") from exc
        if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy holds one unnamed array
            raise ValueError(f"{path} holds a single array, not an .npz of named tensors")
        with npz:  # NpzFile reads lazily: the encoder tensors are never read
            model = convert_checkpoint(npz)
        if upsample != "auto":
            return cls(model, upsample)
        return cls._fastest(model)

    @classmethod
    def _fastest(cls, model: VQVAEDecoder) -> MaskDecoder:
        """Time both formulations on this backend (Metal, CPU, its BLAS) and keep the faster.

        Measuring, not guessing from the platform: the winner depends on the backend's conv
        kernels and matmul library, which no flag reveals.
        """
        started = time.perf_counter()
        codes = mx.arange(AUTO_BATCH * CODES_PER_MASK).reshape(AUTO_BATCH, CODES_PER_MASK)
        codes = codes % model.num_embeddings  # (AUTO_BATCH, 16) int32, every code valid
        decoders = {f: cls(model, f) for f in get_args(Formulation)}
        for decoder in decoders.values():
            decoder._time(codes)  # warm-up: allocations, BLAS threads, kernel builds
        seconds = dict.fromkeys(decoders, math.inf)
        for _ in range(AUTO_REPEATS):  # interleaved, so a burst of load hits both alike
            seconds = {f: min(seconds[f], d._time(codes)) for f, d in decoders.items()}
            if max(seconds.values()) > AUTO_DECISIVE * min(seconds.values()):
                break
        best = min(seconds, key=seconds.__getitem__)
        log.info(
            "VAE decoder uses the %s formulation (%d masks: %s; chosen in %.2f s)",
            best,
            AUTO_BATCH,
            ", ".join(f"{f} {s * 1e3:.1f} ms" for f, s in seconds.items()),
            time.perf_counter() - started,
        )
        return decoders[best]

    def _time(self, codes: mx.array) -> float:
        """Seconds for one forward pass, evaluated (MLX is lazy: eval inside the timing)."""
        start = time.perf_counter()
        mx.eval(self._forward(codes))
        return time.perf_counter() - start

    @property
    def formulation(self) -> Formulation:
        """How the forward pass computes: "conv" (MLX conv ops) or "matmul" (matmuls)."""
        return self._formulation

    @property
    def num_embeddings(self) -> int:
        """Codebook size (128 for vae-oid): valid codes are 0..num_embeddings-1."""
        return self._model.num_embeddings

    @property
    def embedding_dim(self) -> int:
        """Codebook vector width, read from the checkpoint (512 for vae-oid)."""
        return self._model.embedding_dim

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Decode int codes [N, 16] to float32 maps [N, 64, 64] in one batched forward pass.

        The output is the raw decoder map (roughly -1..1), not clipped: threshold at 0 for a mask.
        """
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != CODES_PER_MASK:
            raise ValueError(f"codes must have shape [N, {CODES_PER_MASK}], got {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.shape[0] == 0:
            return np.zeros((0, MASK_SIZE, MASK_SIZE), dtype=np.float32)
        if codes.min() < 0 or codes.max() >= self.num_embeddings:
            raise ValueError(
                f"codes must lie in 0..{self.num_embeddings - 1}, got {codes.min()}..{codes.max()}"
            )
        out = self._forward(mx.array(codes.astype(np.int32)))  # (N, 64, 64), lazy until here
        return np.array(out, dtype=np.float32)
