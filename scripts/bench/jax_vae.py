"""The mask decoder in JAX/XLA (jit), only as a benchmark baseline: big_vision's own decoder runs
on JAX, so this is what a seed project would get on the same machine. Needs `pip install jax`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

NHWC = ("NHWC", "HWIO", "NHWC")


def make_jax_decoder(checkpoint: Mapping[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """codes [N, 16] -> raw masks [N, 64, 64], jit-compiled per batch size on first use."""
    import jax
    import jax.numpy as jnp

    p = {k: jnp.asarray(v, jnp.float32) for k, v in checkpoint.items()}
    embedding_dim = p["_vq_vae._embedding"].shape[1]

    def conv(x: jax.Array, key: str, pad: int) -> jax.Array:
        kernel = p[f"{key}.weight"].transpose(2, 3, 1, 0)  # PyTorch (O, C, k, k) -> HWIO
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), [(pad, pad), (pad, pad)], dimension_numbers=NHWC
        )
        return y + p[f"{key}.bias"]

    def conv_transpose(x: jax.Array, key: str) -> jax.Array:
        # PyTorch ConvTranspose2d(k=4, s=2, p=1) = a conv over the 2x-dilated input with the
        # flipped kernel and padding k - 1 - p = 2. Weight (C, O, k, k) -> HWIO.
        kernel = p[f"{key}.weight"][:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), [(2, 2), (2, 2)], lhs_dilation=(2, 2), dimension_numbers=NHWC
        )
        return y + p[f"{key}.bias"]

    @jax.jit
    def forward(codes: jax.Array) -> jax.Array:
        x = p["_vq_vae._embedding"][codes].reshape(-1, 4, 4, embedding_dim)  # (N, 4, 4, D)
        x = jax.nn.relu(conv(x, "decoder.0", 0))
        for block in ("decoder.2.net", "decoder.3.net"):
            h = jax.nn.relu(conv(x, f"{block}.0", 1))
            h = jax.nn.relu(conv(h, f"{block}.2", 1))
            x = x + conv(h, f"{block}.4", 0)
        for key in ("decoder.4", "decoder.6", "decoder.8", "decoder.10"):
            x = jax.nn.relu(conv_transpose(x, key))
        return conv(x, "decoder.12", 0)[..., 0]  # (N, 64, 64)

    return lambda codes: np.asarray(forward(jnp.asarray(codes, jnp.int32)))
