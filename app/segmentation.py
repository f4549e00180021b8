"""The pipeline after generation: parsed objects -> decoded masks -> full-resolution objects.

Used by the API, the CLI and the benchmarks. `decode_masks` runs MLX (the mask decoder), so the
service calls it on the engine's worker thread; `place_objects` is numpy and runs anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.masks import place_mask
from app.tokens import ParsedObject, Piece, box_to_pixels, parse_pieces, pieces_from_text


class MaskDecoderLike(Protocol):
    def decode(self, codes: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SegmentedObject:
    label: str
    box: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max in pixels of the image as sent
    mask: np.ndarray | None  # bool [height, width]; None for detection-only output
    score: float | None


def decode_masks(objects: Sequence[ParsedObject], decoder: MaskDecoderLike) -> np.ndarray:
    """Raw 64x64 masks for the objects that carry codes, in order, in one decoder call."""
    codes = [o.codes for o in objects if o.codes is not None]
    return decoder.decode(np.asarray(codes, dtype=np.int32).reshape(len(codes), 16))


def place_objects(
    objects: Sequence[ParsedObject], raw_masks: np.ndarray, width: int, height: int
) -> list[SegmentedObject]:
    """Boxes to pixels; each raw mask (one per object with codes, in order) pasted into its box."""
    return [place_object(o, raw, width, height) for o, raw in pair_masks(objects, raw_masks)]


def pair_masks(
    objects: Sequence[ParsedObject], raw_masks: np.ndarray
) -> list[tuple[ParsedObject, np.ndarray | None]]:
    """Each object with its raw mask (decode_masks returns one per object that has codes)."""
    remaining = iter(raw_masks)
    return [(o, None if o.codes is None else next(remaining)) for o in objects]


def place_object(
    obj: ParsedObject, raw_mask: np.ndarray | None, width: int, height: int
) -> SegmentedObject:
    box = box_to_pixels(obj.loc, width, height)
    mask = None if raw_mask is None else place_mask(raw_mask, box, width, height)
    return SegmentedObject(label=obj.label, box=box, mask=mask, score=obj.score)


def objects_from_pieces(
    pieces: Sequence[Piece], width: int, height: int, decoder: MaskDecoderLike
) -> list[SegmentedObject]:
    parsed = parse_pieces(pieces)
    return place_objects(parsed, decode_masks(parsed, decoder), width, height)


def objects_from_text(
    text: str, width: int, height: int, decoder: MaskDecoderLike
) -> list[SegmentedObject]:
    """Objects with full-resolution masks from PaliGemma's output text (stable in-process API)."""
    return objects_from_pieces(pieces_from_text(text), width, height, decoder)
