"""The old service's answer (SEGMENT_COMPAT=seed): objects in the model's input image.

The service this one replaces answered `image` = the model's square input image, and per
segmented object `coordinates` in that image's pixels plus `mask` = the decoder's own 64x64
map as an 8-bit grey PNG, for the client to resize into the box. Clients paste one into the
other, so each of the three keeps that meaning here, byte for byte where it can.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from app.steps.tokens import LOC_TOKENS

Box = tuple[int, int, int, int]  # x_min, y_min, x_max, y_max


@dataclass(frozen=True)
class SeedObject:
    """One segmented object as the old service answered it."""

    coordinates: Box  # in pixels of the model's input image (input_size x input_size)
    mask_png: bytes  # (64, 64) 8-bit grey PNG: 0..255 for the decoder's -1..1


def seed_object(
    raw_mask: np.ndarray, loc: Sequence[int], input_size: int, compression: int = 1
) -> SeedObject:
    """The old keys of one object, from its raw decoder map and its <loc> values."""
    return SeedObject(seed_coordinates(loc, input_size), seed_mask_png(raw_mask, compression))


def seed_coordinates(loc: Sequence[int], input_size: int) -> Box:
    """(y_min, x_min, y_max, x_max) on 0..1023 -> (x_min, y_min, x_max, y_max) in input pixels.

    Truncated toward zero, as the old service did (our own boxes round): its clients saw these
    exact numbers. 1023 / 1024 * size < size, so every value lies inside the image.
    """
    y0, x0, y1, x1 = loc

    def scale(value: int) -> int:
        return int(value / LOC_TOKENS * input_size)

    return scale(x0), scale(y0), scale(x1), scale(y1)


def seed_mask_pixels(raw_mask: np.ndarray) -> np.ndarray:
    """(64, 64) float raw map -> (64, 64) uint8, big_vision's `x * 0.5 + 0.5` clipped to 0..1,
    times 255 and truncated: the old service's arithmetic, in float32 as its decoder's was."""
    soft = np.clip(raw_mask.astype(np.float32) * np.float32(0.5) + np.float32(0.5), 0, 1)
    return (soft * np.float32(255)).astype(np.uint8)


def seed_mask_png(raw_mask: np.ndarray, compression: int = 1) -> bytes:
    """The 64x64 map as a single-channel 8-bit PNG (a grey soft mask, not 0/255)."""
    ok, buffer = cv2.imencode(
        ".png", seed_mask_pixels(raw_mask), [cv2.IMWRITE_PNG_COMPRESSION, compression]
    )
    if not ok:  # pragma: no cover - OpenCV only fails here on an empty array
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def image_png(image: Image.Image, compression: int = 1) -> bytes:
    """The model's input image (upright RGB, input_size square) as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=compression)
    return buffer.getvalue()
