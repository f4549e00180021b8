"""Write a random `vae-oid.npz` with the real key names and PyTorch shapes (tests, dev without
the download). Pure NumPy: no MLX or torch needed to produce it.

    python -m app.model.random_vae models/vae-oid.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN = 128
UPSAMPLE = ((128, 128), (128, 64), (64, 32), (32, 16))  # (in, out) of decoder.4, .6, .8, .10


def _decoder_layers(embedding_dim: int) -> list[tuple[str, str, int, int, int]]:
    """(key, kind, in, out, kernel) for every decoder layer, in checkpoint order."""
    layers = [("decoder.0", "conv", embedding_dim, HIDDEN, 1)]
    for block in ("decoder.2.net", "decoder.3.net"):
        layers += [
            (f"{block}.0", "conv", HIDDEN, HIDDEN, 3),
            (f"{block}.2", "conv", HIDDEN, HIDDEN, 3),
            (f"{block}.4", "conv", HIDDEN, HIDDEN, 1),
        ]
    for key, (c_in, c_out) in zip(
        ("decoder.4", "decoder.6", "decoder.8", "decoder.10"), UPSAMPLE, strict=True
    ):
        layers.append((key, "conv_transpose", c_in, c_out, 4))
    layers.append(("decoder.12", "conv", 16, 1, 1))
    return layers


def write_random_vae(
    path: Path, seed: int = 0, num_embeddings: int = 128, embedding_dim: int = 512
) -> Path:
    """Write random float32 weights in big_vision's PyTorch layout to `path` and return it.

    He-style scales keep activations O(1), so the output has both signs and thresholding at 0
    gives non-trivial masks. A few `encoder.*` tensors are included because the real file has
    them and loaders must ignore them.
    """
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    # Any values: numpy's stubs reject `**dict[str, ndarray]` in np.savez (it has a bool kwarg).
    tensors: dict[str, Any] = {"_vq_vae._embedding": normal((num_embeddings, embedding_dim), 1.0)}
    for key, kind, c_in, c_out, k in _decoder_layers(embedding_dim):
        if kind == "conv":
            # Conv2d weight [out, in, kH, kW]; fan-in = in * k * k.
            tensors[f"{key}.weight"] = normal((c_out, c_in, k, k), np.sqrt(2.0 / (c_in * k * k)))
        else:
            # ConvTranspose2d weight [in, out, kH, kW]; with stride 2 each output pixel sees
            # in * k * k / 4 taps.
            tensors[f"{key}.weight"] = normal((c_in, c_out, k, k), np.sqrt(8.0 / (c_in * k * k)))
        tensors[f"{key}.bias"] = normal((c_out,), 0.1)
    # Shrink the last layer so outputs land near the real model's -1..1 range.
    tensors["decoder.12.weight"] *= np.float32(0.4)
    tensors["decoder.12.bias"][:] = 0.0

    # Plausible encoder tensors (64x64 mask -> 4x4 grid); the decoder never reads them.
    tensors["encoder.0.weight"] = normal((HIDDEN, 1, 4, 4), 0.1)
    tensors["encoder.0.bias"] = normal((HIDDEN,), 0.1)
    tensors["encoder.2.weight"] = normal((HIDDEN, HIDDEN, 4, 4), 0.02)
    tensors["encoder.2.bias"] = normal((HIDDEN,), 0.1)
    tensors["encoder.12.weight"] = normal((embedding_dim, HIDDEN, 1, 1), 0.1)
    tensors["encoder.12.bias"] = normal((embedding_dim,), 0.1)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object keeps np.savez from appending ".npz"
        np.savez(f, **tensors)
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: write a random checkpoint to the given path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", type=Path, help="output file, e.g. models/vae-oid.npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-dim", type=int, default=512)
    args = parser.parse_args(argv)
    print(write_random_vae(args.path, seed=args.seed, embedding_dim=args.embedding_dim))


if __name__ == "__main__":
    main()
