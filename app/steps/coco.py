"""Segmentation results as one COCO file, for dataset tools (pycocotools, FiftyOne).

Pure: numpy only. Masks go in as compressed RLE (exact and compact); boxes as COCO's
[x, y, width, height] in pixels; `area` is the mask's pixel count, as COCO defines it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.steps.masks import encode_coco_rle


class Found(Protocol):
    """What an object must offer (app.steps.objects.SegmentedObject does)."""

    @property
    def label(self) -> str: ...
    @property
    def box(self) -> tuple[int, int, int, int]: ...  # x_min, y_min, x_max, y_max
    @property
    def mask(self) -> np.ndarray | None: ...  # bool (height, width)
    @property
    def score(self) -> float | None: ...


@dataclass(frozen=True)
class CocoImage:
    """One image's results: its size (the masks' shape) and what was found in it."""

    file_name: str
    width: int
    height: int
    objects: Sequence[Found]


def coco_document(images: Sequence[CocoImage], categories: Sequence[str]) -> dict[str, Any]:
    """A COCO dataset/results document; `categories` first in the order given (the prompt's
    classes), then any other label met, so no object is lost."""
    names = list(dict.fromkeys([*categories, *(o.label for i in images for o in i.objects)]))
    category_ids = {name: index for index, name in enumerate(names, start=1)}
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(images, start=1):
        for obj in image.objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, category_ids, obj))
    return {
        "info": {
            "description": "PaliGemma 2 segmentation (python -m app segment)",
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "images": [
            {"id": i, "file_name": im.file_name, "width": im.width, "height": im.height}
            for i, im in enumerate(images, start=1)
        ],
        "categories": [{"id": i, "name": n} for n, i in category_ids.items()],
        "annotations": annotations,
    }


def _annotation(
    annotation_id: int, image_id: int, category_ids: dict[str, int], obj: Found
) -> dict[str, Any]:
    x0, y0, x1, y1 = obj.box
    annotation: dict[str, Any] = {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_ids[obj.label],
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "iscrowd": 0,
        "score": None if obj.score is None else round(obj.score, 4),  # as the JSON has it
    }
    if obj.mask is not None:
        annotation["segmentation"] = encode_coco_rle(obj.mask)
        annotation["area"] = int(np.count_nonzero(obj.mask))
    else:
        # Detection only: the box as a polygon, as loadRes makes for box results. annToMask and
        # COCOeval("segm") need a segmentation: a missing one is a KeyError, [] an IndexError.
        annotation["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        annotation["area"] = (x1 - x0) * (y1 - y0)
    return annotation


def write_coco(path: Path, document: dict[str, Any]) -> None:
    """Write the document as JSON, making the folder: `--coco out/coco.json` just works."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document) + "\n")
