"""COCO RLE (compressed and not) and the PNG form, checked against pycocotools (the reference)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pydantic import TypeAdapter

from app.api.schemas import Mask
from app.steps.masks import (
    decode_coco_rle,
    decode_png,
    decode_rle,
    encode_coco_rle,
    encode_mask,
    encode_png,
    encode_rle,
)


def disk(height: int, width: int, hole: bool = False) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (width // 2, height // 2), min(height, width) // 3, 1, -1)
    if hole:
        cv2.circle(mask, (width // 2, height // 2), min(height, width) // 8, 0, -1)
    return mask.astype(bool)


def from_runs(height: int, width: int, seed: int) -> np.ndarray:
    """Runs of 1 to 2^17 pixels, log-uniform: deltas large, small, positive and negative."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(0, np.log(2**17), size=height * width // 100)).astype(int)
    values = (np.arange(lengths.size) + rng.integers(2)) % 2 == 1
    flat = np.repeat(values, lengths)[: height * width]
    flat = np.pad(flat, (0, height * width - flat.size))  # (h * w,) column-major
    return flat.reshape(width, height).T


def structured() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    first = np.zeros((7, 5), bool)
    first[0, 0] = True  # COCO's counts then start with an empty background run
    last = np.zeros((7, 5), bool)
    last[-1, -1] = True
    single = np.zeros((37, 53), bool)
    single[20, 30] = True
    long_runs = np.zeros((600, 500), bool)
    long_runs[:, 100:] = True  # a 240,000-pixel run: four 5-bit groups
    return {
        "empty": np.zeros((4, 6), bool),
        "full": np.ones((4, 6), bool),
        "1x1-on": np.ones((1, 1), bool),
        "1x1-off": np.zeros((1, 1), bool),
        "1xN-full": np.ones((1, 9), bool),
        "1xN-noise": rng.random((1, 101)) > 0.5,
        "Nx1-noise": rng.random((99, 1)) > 0.5,
        "1x70000-full": np.ones((1, 70_000), bool),  # one run > 2^16
        "70000x1-middle": np.pad(np.ones((50_000, 1), bool), ((10_000, 10_000), (0, 0))),
        "first-pixel": first,
        "last-pixel": last,
        "single-pixel": single,
        "37x53-noise": rng.random((37, 53)) > 0.5,
        "sparse": rng.random((120, 80)) > 0.97,
        "dense": rng.random((80, 120)) > 0.03,
        "checkerboard": (np.indices((33, 31)).sum(axis=0) % 2).astype(bool),  # all deltas 0
        "long-runs": long_runs,
        "long-runs-inverted": ~long_runs,
        "disk": disk(480, 640),
        "disk-with-hole": disk(99, 101, hole=True),
        "runs-1": from_runs(700, 900, seed=1),
        "runs-2": from_runs(1024, 1024, seed=2),
    }


def random_masks(count: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for index in range(count):
        shape = tuple(int(v) for v in rng.integers(1, 70, size=2))
        out[f"random-{index}-{shape[0]}x{shape[1]}"] = rng.random(shape) < rng.random()
    return out


MASKS = {**structured(), **random_masks()}
CASES = pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())


@CASES
def test_compressed_rle_is_byte_for_byte_pycocotools(mask: np.ndarray) -> None:
    ours = encode_coco_rle(mask)
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert isinstance(ours["counts"], str)
    assert ours["counts"] == reference["counts"].decode("ascii")
    assert ours["size"] == [int(v) for v in reference["size"]] == list(mask.shape)


@CASES
def test_pycocotools_reads_our_string_back(mask: np.ndarray) -> None:
    ours = encode_coco_rle(mask)  # str counts, as the JSON carries them: pycocotools takes it
    assert np.array_equal(coco_mask.decode(ours).astype(bool), mask)
    assert coco_mask.area(ours) == mask.sum()
    ys, xs = np.nonzero(mask)
    expected = [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1] if xs.size else [0, 0, 0, 0]
    assert coco_mask.toBbox(ours).tolist() == expected  # [x, y, w, h]


@CASES
def test_our_decoders_invert_the_encoders(mask: np.ndarray) -> None:
    assert np.array_equal(decode_coco_rle(encode_coco_rle(mask)), mask)
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    as_text = {"size": reference["size"], "counts": reference["counts"].decode()}
    assert np.array_equal(decode_coco_rle(as_text), mask)  # pycocotools' string, our reader
    rle = encode_rle(mask)
    assert np.array_equal(decode_rle(rle), mask)
    compressed = coco_mask.frPyObjects(rle, *rle["size"])  # pycocotools' own compression
    assert compressed["counts"].decode() == encode_coco_rle(mask)["counts"]
    assert np.array_equal(decode_png(encode_png(mask)), mask)


def test_decoders_give_bool_masks_of_the_image_shape() -> None:
    mask = disk(30, 50)
    for decoded in (
        decode_coco_rle(encode_coco_rle(mask)),
        decode_rle(encode_rle(mask)),
        decode_png(encode_png(mask)),
    ):
        assert decoded.dtype == bool and decoded.shape == (30, 50)


def test_a_0_255_mask_encodes_as_its_bool_form() -> None:
    mask = disk(40, 30)
    mask[0, 0] = True  # the leading empty run must still be written
    as_bytes = mask.astype(np.uint8) * 255
    assert encode_rle(as_bytes) == encode_rle(mask)
    assert encode_coco_rle(as_bytes) == encode_coco_rle(mask)


def test_encode_mask_dispatches_coco_rle_and_the_wire_schema_accepts_it() -> None:
    mask = disk(20, 24, hole=True)
    encoded = encode_mask(mask, "coco_rle")
    assert encoded == encode_coco_rle(mask)
    wire = TypeAdapter(Mask).validate_python(encoded)
    assert wire is not None and not isinstance(wire, str | list)
    assert wire.counts == encode_coco_rle(mask)["counts"]
    assert list(wire.size) == [20, 24]
