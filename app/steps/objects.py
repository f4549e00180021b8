"""Objects through the pipeline's stages, and the steps between them.

    ParsedObject (tokens.py: label, loc 0..1023, 16 codes)
      -> DecodedObject (+ its own raw 64x64 mask; made on the MLX thread by `decode_objects`)
      -> SegmentedObject (box in pixels, full-resolution mask, area; `place_object`, numpy only)

Each object carries its own mask from the moment it is decoded, so nothing pairs lists by
position across threads. `objects_from_text` is the stable in-process API for output text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from app.steps.masks import place_mask
from app.steps.tokens import CODES_PER_MASK, ParsedObject, box_to_pixels, parse_text

if TYPE_CHECKING:
    from app.steps.seed import SeedObject

Box = tuple[int, int, int, int]  # x_min, y_min, x_max (exclusive), y_max in pixels


class MaskDecoderLike(Protocol):
    def decode(self, codes: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class DecodedObject:
    """A parsed object and its raw decoder output; plain numpy, safe to cross threads."""

    label: str
    loc: tuple[int, int, int, int]  # y_min, x_min, y_max, x_max on 0..1023
    score: float | None
    raw_mask: np.ndarray | None  # (64, 64) float32 raw decoder map; None without 16 codes


@dataclass(frozen=True)
class SegmentedObject:
    """One object at the image's own resolution: what every front end renders."""

    label: str
    box: Box
    mask: np.ndarray | None  # bool [height, width]; None for detection-only output
    score: float | None
    area: int  # mask pixels (box pixels when there is no mask)
    encoded_mask: Any = None  # the mask in the requested wire format, once encoded
    seed: SeedObject | None = None  # the old service's keys (SEGMENT_COMPAT=seed, masks only)


def decode_objects(
    objects: Sequence[ParsedObject], decoder: MaskDecoderLike
) -> list[DecodedObject]:
    """Every object with codes gets its raw mask, all of them in one decoder call."""
    with_codes = [o for o in objects if o.codes is not None]
    codes = np.asarray([o.codes for o in with_codes], dtype=np.int32)
    raw = iter(decoder.decode(codes.reshape(len(with_codes), CODES_PER_MASK)))  # (N, 64, 64)
    return [
        DecodedObject(o.label, o.loc, o.score, None if o.codes is None else next(raw))
        for o in objects
    ]


def place_object(obj: DecodedObject, width: int, height: int) -> SegmentedObject:
    """Box to pixels, raw mask resized into it (numpy/OpenCV only: runs off the MLX thread)."""
    box = box_to_pixels(obj.loc, width, height)
    mask = None if obj.raw_mask is None else place_mask(obj.raw_mask, box, width, height)
    area = int(mask.sum()) if mask is not None else (box[2] - box[0]) * (box[3] - box[1])
    return SegmentedObject(label=obj.label, box=box, mask=mask, score=obj.score, area=area)


def objects_from_text(
    text: str, width: int, height: int, decoder: MaskDecoderLike
) -> list[SegmentedObject]:
    """Objects with full-resolution masks from PaliGemma's output text (stable in-process API)."""
    return [place_object(o, width, height) for o in decode_objects(parse_text(text), decoder)]
