"""Mask placement and encodings."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from app.steps.masks import (
    LIBPNG_MAX_SIDE,
    decode_png,
    encode_mask,
    encode_png,
    encode_polygons,
    encode_rle,
    place_mask,
)


def test_mask_is_placed_inside_its_box_only() -> None:
    raw = np.ones((64, 64), np.float32)  # decoder says "object" everywhere
    mask = place_mask(raw, (10, 20, 50, 40), width=100, height=60)
    assert mask is not None and mask.shape == (60, 100) and mask.dtype == bool
    assert mask[20:40, 10:50].all()
    assert mask.sum() == 40 * 20


def test_threshold_is_raw_zero() -> None:
    raw = np.full((64, 64), -0.01, np.float32)
    raw[:, 32:] = 0.01  # right half positive
    mask = place_mask(raw, (0, 0, 64, 64), width=64, height=64)
    assert mask is not None
    assert not mask[:, :32].any() and mask[:, 32:].all()


def test_enlarging_keeps_the_geometry() -> None:
    raw = -np.ones((64, 64), np.float32)
    raw[16:48, 16:48] = 1.0  # a centred square, half the side
    mask = place_mask(raw, (0, 0, 640, 640), 640, 640)
    assert mask is not None
    ys, xs = np.nonzero(mask)
    assert abs(ys.min() - 160) <= 6 and abs(ys.max() - 479) <= 6
    assert abs(xs.min() - 160) <= 6 and abs(xs.max() - 479) <= 6


def test_shrinking_is_antialiased_not_sampled() -> None:
    # A one-pixel-wide checker would alias into stripes with nearest sampling; averaged, it is ~0.
    raw = np.where((np.indices((64, 64)).sum(0) % 2) == 0, 1.0, -1.0).astype(np.float32) + 0.2
    mask = place_mask(raw, (0, 0, 8, 8), 8, 8)
    assert mask is not None and mask.all()  # mean is +0.2 everywhere once averaged


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (10, 10, 20, 10), (30, 30, 20, 40)])
def test_degenerate_boxes_have_no_mask(box: tuple[int, int, int, int]) -> None:
    assert place_mask(np.ones((64, 64), np.float32), box, 50, 50) is None


def test_png_round_trips_at_full_size() -> None:
    mask = np.zeros((30, 70), bool)
    mask[5:10, 20:60] = True
    png = Image.open(io.BytesIO(base64.b64decode(encode_png(mask))))
    assert png.size == (70, 30) and png.mode == "L"
    pixels = np.asarray(png)
    assert set(np.unique(pixels)) == {0, 255}
    assert ((pixels == 255) == mask).all()


def _rle_decode(rle: dict[str, list[int]]) -> np.ndarray:
    h, w = rle["size"]
    flat = np.zeros(h * w, bool)
    position, value = 0, False
    for count in rle["counts"]:
        flat[position : position + count] = value
        position, value = position + count, not value
    return flat.reshape((h, w), order="F")


@pytest.mark.parametrize("corner", [False, True])
def test_rle_round_trips_column_major(corner: bool) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((13, 17)) > 0.6
    mask[0, 0] = corner
    rle = encode_rle(mask)
    assert rle["size"] == [13, 17] and sum(rle["counts"]) == 13 * 17
    assert (_rle_decode(rle) == mask).all()


def test_polygons_trace_the_outline() -> None:
    mask = np.zeros((50, 50), bool)
    mask[10:20, 5:30] = True
    [polygon] = encode_polygons(mask)
    xs, ys = polygon[0::2], polygon[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (5, 29, 10, 19)


def test_encode_mask_none_format() -> None:
    assert encode_mask(np.ones((2, 2), bool), "none") is None


@pytest.mark.parametrize("box", [(0, 0, 640, 480), (10, 20, 70, 90), (5, 5, 300, 40)])
def test_placement_matches_the_pil_bilinear_reference(box: tuple[int, int, int, int]) -> None:
    """OpenCV serves the enlarging case; it must agree with PIL's bilinear (big_vision's)."""
    raw = np.random.default_rng(1).normal(0, 1, (64, 64)).astype(np.float32)
    x0, y0, x1, y1 = box
    reference = np.asarray(
        Image.fromarray(raw, mode="F").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
    )
    mask = place_mask(raw, box, 640, 480)
    assert mask is not None
    assert (mask[y0:y1, x0:x1] == (reference > 0)).mean() > 0.999


@pytest.mark.parametrize("shape", [(1, LIBPNG_MAX_SIDE + 1), (LIBPNG_MAX_SIDE + 1, 2)])
def test_png_writes_sides_past_libpngs_limit(shape: tuple[int, int]) -> None:
    """OpenCV's writer refuses them (uploads stop at images.MAX_IMAGE_SIDE; an in-process
    caller's image does not), so Pillow's writes them: the same 8-bit 0 / 255 PNG."""
    mask = np.zeros(shape, bool)
    mask.reshape(-1)[::7] = True
    png = Image.open(io.BytesIO(base64.b64decode(encode_png(mask))))
    assert png.mode == "L" and png.size == shape[::-1]
    assert np.array_equal(decode_png(encode_png(mask)), mask)


def test_placing_writes_only_the_box() -> None:
    raw = np.ones((64, 64), np.float32)
    mask = place_mask(raw, (0, 0, 100, 3), width=100, height=5)  # shrunk one way: PIL's path
    assert mask is not None and mask[:3].all() and not mask[3:].any()
