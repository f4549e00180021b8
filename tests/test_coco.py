"""COCO compressed RLE and COCO files, checked against pycocotools (the reference reader)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from app.coco import CocoImage, coco_document, write_coco
from app.masks import (
    decode_coco_rle,
    decode_png,
    decode_rle,
    encode_coco_rle,
    encode_mask,
    encode_rle,
)


def disk(height: int, width: int, hole: bool = False) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (width // 2, height // 2), min(height, width) // 3, 1, -1)
    if hole:
        cv2.circle(mask, (width // 2, height // 2), min(height, width) // 8, 0, -1)
    return mask.astype(bool)


def masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    corner = np.zeros((7, 5), bool)
    corner[0, 0] = True  # the first pixel set: COCO starts with an empty background run
    long_runs = np.zeros((600, 500), bool)
    long_runs[:, 100:] = True  # runs far beyond 2^16 need many 5-bit groups
    return [
        np.zeros((4, 6), bool),
        np.ones((4, 6), bool),
        np.ones((1, 1), bool),
        np.zeros((1, 1), bool),
        np.ones((1, 9), bool),
        rng.random((9, 1)) > 0.5,
        corner,
        rng.random((37, 53)) > 0.5,
        rng.random((120, 80)) > 0.97,
        long_runs,
        ~long_runs,
        disk(480, 640),
        disk(99, 101, hole=True),
    ]


@pytest.mark.parametrize("mask", masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}-{int(m.sum())}")
def test_compressed_rle_is_what_pycocotools_writes_and_reads(mask: np.ndarray) -> None:
    ours = encode_coco_rle(mask)
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == reference["counts"].decode("ascii")
    assert ours["size"] == [int(v) for v in reference["size"]]
    as_coco = {"size": ours["size"], "counts": ours["counts"].encode("ascii")}
    assert np.array_equal(coco_mask.decode(as_coco).astype(bool), mask)
    assert coco_mask.area(as_coco) == mask.sum()
    assert np.array_equal(decode_coco_rle(ours), mask)


@pytest.mark.parametrize("mask", masks()[:9], ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_uncompressed_rle_and_png_round_trip(mask: np.ndarray) -> None:
    rle = encode_rle(mask)
    assert np.array_equal(decode_rle(rle), mask)
    from_uncompressed = coco_mask.frPyObjects(rle, *rle["size"])
    assert from_uncompressed["counts"].decode() == encode_coco_rle(mask)["counts"]
    assert np.array_equal(decode_png(encode_mask(mask, "png")), mask)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Found:
    label: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None
    score: float | None


def test_a_coco_file_loads_in_pycocotools(tmp_path: Path) -> None:
    cat = disk(120, 160)
    ys, xs = np.nonzero(cat)
    cat_box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    hole = disk(90, 60, hole=True)
    images = [
        CocoImage(
            "a.jpg",
            160,
            120,
            [Found("cat", cat_box, cat, 0.91), Found("car", (5, 6, 25, 16), None, 0.5)],
        ),
        CocoImage("b.png", 60, 90, [Found("dog", (10, 20, 50, 70), hole, None)]),
    ]
    path = tmp_path / "coco.json"
    write_coco(path, coco_document(images, ["dog", "cat"]))
    coco = COCO(str(path))
    names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
    assert names == ["dog", "cat", "car"]  # the prompt's order, then labels met on the way
    assert [i["file_name"] for i in coco.loadImgs(coco.getImgIds())] == ["a.jpg", "b.png"]
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [coco.loadCats(a["category_id"])[0]["name"] for a in first] == ["cat", "car"]
    assert np.array_equal(coco.annToMask(first[0]).astype(bool), cat)
    assert first[0]["bbox"] == list(coco_mask.toBbox(coco.annToRLE(first[0])).astype(int))
    assert first[0]["area"] == int(cat.sum()) and first[0]["score"] == 0.91
    assert first[1]["bbox"] == [5, 6, 20, 10] and first[1]["area"] == 200  # detection only
    assert coco.annToMask(first[1]).sum() > 0
    [dog] = coco.loadAnns(coco.getAnnIds(imgIds=[2]))
    assert np.array_equal(coco.annToMask(dog).astype(bool), hole)  # holes survive RLE
    results = coco.loadRes(coco.dataset["annotations"])  # usable as detection results too
    assert len(results.getAnnIds()) == 3
