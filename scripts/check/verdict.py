"""Did the model find the labelled object? Pure functions over boxes and masks, no model.

The check passes when one object's box overlaps the hand-labelled box (IoU >= 0.5, the usual
detection threshold) and its mask lies inside that object's own box and covers a sensible share
of it. The share bounds: a solid object's silhouette fills roughly 40-80 % of its box (the
astronaut's about 60 %, estimated: the background beside her head and the helmet she holds take
the rest), so under 20 % is a mask that is nearly empty or specks, and over 95 % a filled
rectangle: what a broken mask decoder (wrong weights or layout) gives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

Box = tuple[int, int, int, int]  # x_min, y_min, x_max (exclusive), y_max in pixels

MIN_IOU = 0.5
MIN_SHARE = 0.20  # of its own box the mask must cover ...
MAX_SHARE = 0.95  # ... and may cover at most
MAX_OUTSIDE = 0.01  # of the mask's pixels that may lie outside its box (placement sets none)


class Found(Protocol):
    """What the verdict reads of an object (`SegmentedObject` has these)."""

    @property
    def box(self) -> Box: ...

    @property
    def mask(self) -> np.ndarray | None: ...


@dataclass(frozen=True)
class Expected:
    """The photo, what to ask for, and the hand-labelled box of the object."""

    image: Path
    prompt: str
    box: Box

    @classmethod
    def load(cls, path: Path) -> Expected:
        """From a label file next to its photo (`scripts/check/astronaut.json`)."""
        data = json.loads(path.read_text())
        x0, y0, x1, y1 = (int(v) for v in data["box"])
        return cls(image=path.parent / data["image"], prompt=data["prompt"], box=(x0, y0, x1, y1))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # what passed, or why not, in a few words with the numbers
    iou: float | None = None  # of the object judged (the best-placed one)
    share: float | None = None  # of its box its mask covers


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes; 0 when either is empty."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def judge(objects: Sequence[Found], expected: Box) -> Verdict:
    """Pass or fail, with the reason, judging the object whose box best matches `expected`."""
    if not objects:
        return Verdict(False, "no object found")
    best = max(objects, key=lambda obj: box_iou(obj.box, expected))
    iou = box_iou(best.box, expected)
    if iou < MIN_IOU:
        return Verdict(False, f"wrong place: box IoU {iou:.2f} < {MIN_IOU:.2f}", iou)
    if best.mask is None or not best.mask.any():
        return Verdict(False, "no mask for the object found", iou, 0.0)
    inside, outside = _mask_split(best.mask, best.box)
    if outside > MAX_OUTSIDE * (inside + outside):
        share_out = outside / (inside + outside)
        return Verdict(False, f"mask outside its box: {share_out:.0%} of its pixels", iou)
    share = inside / max(_area(best.box), 1)
    if share < MIN_SHARE:
        reason = f"mask covers too little of its box: {share:.0%} < {MIN_SHARE:.0%}"
        return Verdict(False, reason, iou, share)
    if share > MAX_SHARE:
        reason = f"mask covers too much of its box: {share:.0%} > {MAX_SHARE:.0%}"
        return Verdict(False, reason, iou, share)
    return Verdict(True, f"found at box IoU {iou:.2f}, mask {share:.0%} of its box", iou, share)


def _area(box: Box) -> int:
    return max(box[2] - box[0], 0) * max(box[3] - box[1], 0)


def _mask_split(mask: np.ndarray, box: Box) -> tuple[int, int]:
    """Mask pixels (bool [height, width]) inside and outside the box."""
    x0, y0, x1, y1 = box
    total = int(mask.sum())
    inside = int(mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum())
    return inside, total - inside
