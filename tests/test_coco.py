"""COCO files, loaded and evaluated by pycocotools (the reference reader).

The RLE encoding itself is checked in tests/test_coco_rle.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from app.steps.coco import CocoImage, coco_document, write_coco


def disk(height: int, width: int, hole: bool = False) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (width // 2, height // 2), min(height, width) // 3, 1, -1)
    if hole:
        cv2.circle(mask, (width // 2, height // 2), min(height, width) // 8, 0, -1)
    return mask.astype(bool)


@dataclass(frozen=True)
class Found:
    label: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None
    score: float | None


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


CAT = disk(120, 160)
DOG = disk(90, 60, hole=True)


def two_images(dog_score: float | None = None) -> list[CocoImage]:
    """A segmented and a detection-only object in one image; a mask with a hole in the other."""
    return [
        CocoImage(
            "a.jpg",
            160,
            120,
            [Found("cat", box_of(CAT), CAT, 0.91), Found("car", (5, 6, 25, 16), None, 0.5)],
        ),
        CocoImage("b.png", 60, 90, [Found("dog", box_of(DOG), DOG, dog_score)]),
    ]


@pytest.fixture
def coco(tmp_path: Path) -> COCO:
    path = tmp_path / "out" / "coco.json"  # write_coco makes the folder
    write_coco(path, coco_document(two_images(), ["dog", "cat"]))
    return COCO(str(path))


def test_images_and_categories_keep_their_order(coco: COCO) -> None:
    assert coco.getImgIds() == [1, 2]
    assert [i["file_name"] for i in coco.loadImgs(coco.getImgIds())] == ["a.jpg", "b.png"]
    assert [(i["width"], i["height"]) for i in coco.loadImgs([1, 2])] == [(160, 120), (60, 90)]
    assert coco.getCatIds() == [1, 2, 3]
    names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
    assert names == ["dog", "cat", "car"]  # the prompt's order, then labels met on the way
    assert coco.getCatIds(catNms=["car"]) == [3]


def test_masks_boxes_and_areas_come_back(coco: COCO) -> None:
    cat, car = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    [dog] = coco.loadAnns(coco.getAnnIds(imgIds=[2]))
    assert [a["id"] for a in (cat, car, dog)] == [1, 2, 3]
    assert [a["category_id"] for a in (cat, car, dog)] == [2, 3, 1]
    assert np.array_equal(coco.annToMask(cat).astype(bool), CAT)
    assert np.array_equal(coco.annToMask(dog).astype(bool), DOG)  # holes survive RLE
    for ann, mask in ((cat, CAT), (dog, DOG)):
        assert ann["bbox"] == coco_mask.toBbox(coco.annToRLE(ann)).tolist()  # [x, y, w, h]
        assert ann["area"] == int(mask.sum()) == coco_mask.area(coco.annToRLE(ann))
        assert ann["iscrowd"] == 0
    assert cat["score"] == 0.91 and dog["score"] is None


def test_a_detection_only_object_is_its_box(coco: COCO) -> None:
    [car] = coco.loadAnns(coco.getAnnIds(catIds=[3]))
    assert car["bbox"] == [5, 6, 20, 10] and car["area"] == 200
    expected = np.zeros((120, 160), bool)
    expected[6:16, 5:25] = True
    assert np.array_equal(coco.annToMask(car).astype(bool), expected)


def test_the_annotations_load_as_results_and_score_perfectly(coco: COCO) -> None:
    from pycocotools.cocoeval import COCOeval

    assert len(coco.loadRes(copy.deepcopy(coco.dataset["annotations"])).getAnnIds()) == 3
    scored = coco_document(two_images(dog_score=0.7), ["dog", "cat"])["annotations"]
    for iou_type in ("segm", "bbox"):
        # loadRes rewrites ids and areas in place, hence the copy.
        evaluation = COCOeval(coco, coco.loadRes(copy.deepcopy(scored)), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]: each finds itself
