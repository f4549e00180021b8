"""The MLX VQ-VAE decoder against an independent NumPy reference with PyTorch semantics.

The reference works on the checkpoint's PyTorch-layout arrays in NCHW and implements each
layer by its definition, so it shares no transposes or layout choices with `app.model.vae`. Both
formulations ("conv" and "matmul") are checked against it and against each other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, get_args

import mlx.core as mx
import numpy as np
import pytest

import app.model.vae as vae
from app.model.random_vae import main as random_vae_main
from app.model.random_vae import write_random_vae
from app.model.vae import MaskDecoder

TOL = 1e-4
SAME_TOL = 1e-5  # between the two MLX formulations: same float32 math, other summation order
SMALL_DIM = 32  # codebook width for the fast tests; one test runs the real 512
FORMULATIONS = get_args(vae.Formulation)  # ("conv", "matmul")


# --- NumPy reference (PyTorch semantics, NCHW, float64) -------------------------------------


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """torch Conv2d, stride 1: cross-correlation of zero-padded x [N,C,H,W] with w [O,C,k,k]."""
    _, _, h, wd = x.shape
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("nchw,oc->nohw", xp[:, :, dy : dy + ho, dx : dx + wo], w[:, :, dy, dx])
    return out + b[None, :, None, None]


def _conv_transpose2d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 2, pad: int = 1
) -> np.ndarray:
    """torch ConvTranspose2d by definition: input pixel (i, j) adds x[:, :, i, j] @ w [C,O,k,k]
    into the output window at (stride*i, stride*j); then `pad` is cropped from every side."""
    n, _, h, wd = x.shape
    k = w.shape[2]
    full = np.zeros((n, w.shape[1], (h - 1) * stride + k, (wd - 1) * stride + k))
    for i in range(h):
        for j in range(wd):
            window = np.einsum("nc,cokl->nokl", x[:, :, i, j], w)
            full[:, :, stride * i : stride * i + k, stride * j : stride * j + k] += window
    return full[:, :, pad:-pad, pad:-pad] + b[None, :, None, None]


def reference_decode(ckpt: dict[str, np.ndarray], codes: np.ndarray) -> np.ndarray:
    """big_vision's decoder on PyTorch-layout weights: codes [N,16] -> [N,64,64]."""
    p = {k: v.astype(np.float64) for k, v in ckpt.items()}

    def conv(t: np.ndarray, key: str, pad: int) -> np.ndarray:
        return _conv2d(t, p[f"{key}.weight"], p[f"{key}.bias"], pad)

    def relu(t: np.ndarray) -> np.ndarray:
        return np.maximum(t, 0.0)

    emb = p["_vq_vae._embedding"]
    x = np.zeros((codes.shape[0], emb.shape[1], 4, 4))
    for i in range(16):
        x[:, :, i // 4, i % 4] = emb[codes[:, i]]  # code i -> row i // 4, column i % 4
    x = relu(conv(x, "decoder.0", 0))
    for block in ("decoder.2.net", "decoder.3.net"):
        y = relu(conv(x, f"{block}.0", 1))
        y = relu(conv(y, f"{block}.2", 1))
        x = x + conv(y, f"{block}.4", 0)
    for key in ("decoder.4", "decoder.6", "decoder.8", "decoder.10"):
        x = relu(_conv_transpose2d(x, p[f"{key}.weight"], p[f"{key}.bias"]))
    return conv(x, "decoder.12", 0)[:, 0]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_vae(tmp_path_factory.mktemp("vae") / "vae-oid.npz", embedding_dim=SMALL_DIM)


@pytest.fixture(scope="module")
def small_ckpt(small_path: Path) -> dict[str, np.ndarray]:
    with np.load(small_path) as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def small_decoders(small_path: Path) -> dict[str, MaskDecoder]:
    return {f: MaskDecoder.load(small_path, upsample=f) for f in FORMULATIONS}


@pytest.fixture(scope="module", params=FORMULATIONS)
def small_decoder(request: pytest.FixtureRequest, small_decoders: dict) -> MaskDecoder:
    """Each test that takes this runs once per formulation."""
    decoder: MaskDecoder = small_decoders[request.param]
    assert decoder.formulation == request.param
    return decoder


def _codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 128, size=(n, 16))


def _save(path: Path, tensors: dict[str, Any]) -> Path:
    np.savez(path, **tensors)
    return path


# --- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 8])
def test_formulations_match_reference_and_each_other(
    small_decoders: dict[str, MaskDecoder], small_ckpt: dict, n: int
) -> None:
    codes = _codes(n, seed=n)
    ref = reference_decode(small_ckpt, codes)
    out = {f: d.decode(codes) for f, d in small_decoders.items()}
    for f, maps in out.items():
        assert maps.shape == (n, 64, 64), f
        assert maps.dtype == np.float32, f
        np.testing.assert_allclose(maps, ref, rtol=0, atol=TOL, err_msg=f)
    np.testing.assert_allclose(out["matmul"], out["conv"], rtol=0, atol=SAME_TOL)
    # The random checkpoint must give non-trivial masks, or parity would prove little.
    assert 0.02 < (out["conv"] > 0).mean() < 0.98


def test_matches_numpy_reference_at_full_size(tmp_path: Path) -> None:
    path = write_random_vae(tmp_path / "vae-oid.npz", seed=3, embedding_dim=512)
    codes = _codes(3, seed=2)
    with np.load(path) as npz:
        ref = reference_decode(dict(npz), codes)
    out = {}
    for f in FORMULATIONS:
        decoder = MaskDecoder.load(path, upsample=f)
        assert (decoder.num_embeddings, decoder.embedding_dim) == (128, 512)
        out[f] = decoder.decode(codes)
        np.testing.assert_allclose(out[f], ref, rtol=0, atol=TOL, err_msg=f)
    np.testing.assert_allclose(out["matmul"], out["conv"], rtol=0, atol=SAME_TOL)


def test_conv_transpose_matmul_on_non_square_input() -> None:
    # The decoder's maps are square, which would hide swapped H/W strides in the interleave.
    rng = np.random.default_rng(9)
    x = mx.array(rng.standard_normal((2, 3, 5, 6)).astype(np.float32))  # (N, H, W, C)
    w = mx.array(rng.standard_normal((4, 4, 4, 6)).astype(np.float32))  # (O, kH, kW, C)
    b = mx.array(rng.standard_normal(4).astype(np.float32))
    want = mx.conv_transpose2d(x, w, stride=2, padding=1) + b  # (2, 6, 10, 4)
    got = vae._conv_transpose_matmul(x, w, b)
    assert got.shape == want.shape == (2, 6, 10, 4)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=SAME_TOL)


# --- choosing the formulation ----------------------------------------------------------------


def test_auto_picks_a_formulation_by_timing_and_logs_it(
    small_path: Path,
    small_decoders: dict[str, MaskDecoder],
    small_ckpt: dict,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="app.model.vae"):
        decoder = MaskDecoder.load(small_path)  # "auto" is the default
    assert decoder.formulation in FORMULATIONS
    message = caplog.messages[-1]
    assert f"uses the {decoder.formulation} formulation" in message
    assert "conv " in message and "matmul " in message and " ms" in message
    codes = _codes(2, seed=8)
    out = decoder.decode(codes)
    np.testing.assert_array_equal(out, small_decoders[decoder.formulation].decode(codes))
    np.testing.assert_allclose(out, reference_decode(small_ckpt, codes), rtol=0, atol=TOL)
    with pytest.raises(AttributeError):
        decoder.formulation = "conv"  # type: ignore[misc]  # read-only


@pytest.mark.parametrize("faster", FORMULATIONS)
def test_auto_keeps_the_faster(
    small_path: Path, monkeypatch: pytest.MonkeyPatch, faster: str
) -> None:
    # Fake clocks: whichever formulation is `faster` takes 1 ms, the other 3 ms.
    def fake_time(self: MaskDecoder, codes: Any) -> float:
        return 0.001 if self.formulation == faster else 0.003

    monkeypatch.setattr(MaskDecoder, "_time", fake_time)
    assert MaskDecoder.load(small_path, upsample="auto").formulation == faster


def test_unknown_upsample_is_rejected(small_path: Path) -> None:
    with pytest.raises(ValueError, match="upsample"):
        MaskDecoder.load(small_path, upsample="fft")  # type: ignore[arg-type]


def test_codes_fill_the_grid_row_major(small_decoder: MaskDecoder, small_ckpt: dict) -> None:
    base = _codes(1, seed=4)
    transposed = base.reshape(1, 4, 4).transpose(0, 2, 1).reshape(1, 16)  # (1, 16) column-major
    row1 = base.copy()
    row1[0, 1] = (row1[0, 1] + 1) % 128  # grid cell (0, 1)
    col1 = base.copy()
    col1[0, 4] = (col1[0, 4] + 1) % 128  # grid cell (1, 0): same cell as code 1 if transposed
    codes = np.concatenate([base, transposed, row1, col1])
    out = small_decoder.decode(codes)
    np.testing.assert_allclose(out, reference_decode(small_ckpt, codes), rtol=0, atol=TOL)
    assert np.abs(out[0] - out[1]).max() > 0.1  # the order of the codes matters
    assert np.abs(out[2] - out[3]).max() > 0.1


# --- batching and shapes ---------------------------------------------------------------------


def test_batch_equals_one_at_a_time(small_decoder: MaskDecoder) -> None:
    codes = _codes(3, seed=5)
    together = small_decoder.decode(codes)
    alone = np.concatenate([small_decoder.decode(codes[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


def test_empty_batch_skips_mlx(small_decoder: MaskDecoder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vae, "mx", None)  # any MLX call would now raise
    out = small_decoder.decode(np.zeros((0, 16), dtype=np.int64))
    assert out.shape == (0, 64, 64)
    assert out.dtype == np.float32


def test_any_integer_dtype(small_decoder: MaskDecoder) -> None:
    codes = _codes(2, seed=6)
    np.testing.assert_array_equal(
        small_decoder.decode(codes.astype(np.uint8)), small_decoder.decode(codes)
    )


@pytest.mark.parametrize(
    "codes",
    [
        np.zeros(16, dtype=np.int64),  # no batch axis
        np.zeros((2, 15), dtype=np.int64),
        np.zeros((2, 16, 1), dtype=np.int64),
        np.full((1, 16), 128),
        np.full((1, 16), -1),
        np.zeros((1, 16), dtype=np.float32),
    ],
    ids=["1d", "15-codes", "3d", "too-big", "negative", "float"],
)
def test_bad_codes_raise(small_decoder: MaskDecoder, codes: np.ndarray) -> None:
    with pytest.raises(ValueError, match="codes"):
        small_decoder.decode(codes)


# --- loading ---------------------------------------------------------------------------------


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "vae-oid.npz"
    with pytest.raises(FileNotFoundError, match="make models") as info:
        MaskDecoder.load(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("decoder.6.weight", (64, 128, 4, 4)),  # ConvTranspose2d saved as if [out, in, ...]
        ("decoder.2.net.2.weight", (128, 128, 1, 1)),
        ("decoder.0.weight", (128, SMALL_DIM + 1, 1, 1)),  # does not match the codebook
        ("decoder.12.bias", (2,)),
        ("_vq_vae._embedding", (128,)),
    ],
)
def test_wrong_shape_names_the_key(
    tmp_path: Path, small_ckpt: dict, key: str, shape: tuple[int, ...]
) -> None:
    path = _save(tmp_path / "bad.npz", {**small_ckpt, key: np.zeros(shape, np.float32)})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        MaskDecoder.load(path)


@pytest.mark.parametrize("key", ["decoder.8.bias", "decoder.3.net.4.weight", "_vq_vae._embedding"])
def test_missing_tensor_names_the_key(tmp_path: Path, small_ckpt: dict, key: str) -> None:
    path = _save(tmp_path / "bad.npz", {k: v for k, v in small_ckpt.items() if k != key})
    with pytest.raises(ValueError, match=f"missing tensor '{key}'"):
        MaskDecoder.load(path)


def test_unknown_decoder_tensor_is_rejected(tmp_path: Path, small_ckpt: dict) -> None:
    extra = {**small_ckpt, "decoder.14.weight": np.zeros((1, 1, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"decoder\.14\.weight"):
        MaskDecoder.load(_save(tmp_path / "extra.npz", extra))


def test_encoder_and_other_tensors_are_ignored(
    tmp_path: Path, small_ckpt: dict, small_decoders: dict[str, MaskDecoder]
) -> None:
    assert any(k.startswith("encoder.") for k in small_ckpt)  # the random file has them
    decoder_only = {k: v for k, v in small_ckpt.items() if not k.startswith("encoder.")}
    odd = {**small_ckpt, "encoder.99.weight": np.zeros((3,), np.float32), "_vq_vae._ema_w": 0}
    codes = _codes(2, seed=7)
    for tensors in (decoder_only, odd):
        path = _save(tmp_path / "ckpt.npz", tensors)
        np.testing.assert_array_equal(
            MaskDecoder.load(path, upsample="matmul").decode(codes),
            small_decoders["matmul"].decode(codes),
        )


@pytest.mark.parametrize("content", [b"not a zip file", None], ids=["garbage", "bare-npy"])
def test_unreadable_checkpoint_raises_value_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "vae-oid.npz"
    if content is None:
        with path.open("wb") as f:
            np.save(f, np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)):
        MaskDecoder.load(path)


def test_cli_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "models" / "vae-oid.npz"
    random_vae_main([str(path), "--embedding-dim", "16", "--seed", "2"])
    decoder = MaskDecoder.load(path, upsample="matmul")
    assert (decoder.num_embeddings, decoder.embedding_dim) == (128, 16)
