"""PaliGemma segmentation VQ-VAE decoder (big_vision `vae-oid.npz`) in pure MLX.

PaliGemma emits 16 `<seg###>` codes per object; this decoder turns them into a 64x64 map,
roughly in -1..1, foreground where it is > 0. Skeleton as in mlx-lm: constants -> blocks ->
top module -> load. Nothing here creates an `mx.array` at import: MLX streams are
thread-local, so load and decode both run on the service's MLX worker thread.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

CODES_PER_OBJECT = 16
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

    def __call__(self, x: mx.array) -> mx.array:
        y = x
        for layer in self.net:
            y = layer(y)
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

    def __call__(self, codes: mx.array) -> mx.array:
        x = self.embedding(codes)  # (N, 16, D)
        x = x.reshape(codes.shape[0], GRID, GRID, -1)  # (N, 4, 4, D) channels-last, row-major
        for layer in self.decoder:
            x = layer(x)  # ends at (N, 64, 64, 1)
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

    def __init__(self, model: VQVAEDecoder):
        self._model = model

    @classmethod
    def load(cls, path: str | Path) -> MaskDecoder:
        """Load `vae-oid.npz` (PyTorch layout); call on the MLX worker thread."""
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
            return cls(convert_checkpoint(npz))

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
        if codes.ndim != 2 or codes.shape[1] != CODES_PER_OBJECT:
            raise ValueError(f"codes must have shape [N, {CODES_PER_OBJECT}], got {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.shape[0] == 0:
            return np.zeros((0, MASK_SIZE, MASK_SIZE), dtype=np.float32)
        if codes.min() < 0 or codes.max() >= self.num_embeddings:
            raise ValueError(
                f"codes must lie in 0..{self.num_embeddings - 1}, got {codes.min()}..{codes.max()}"
            )
        out = self._model(mx.array(codes.astype(np.int32)))  # (N, 64, 64), lazy until here
        return np.array(out, dtype=np.float32)
