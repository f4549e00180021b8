"""A picture of a result for people: each object's mask tinted, outlined and boxed, with a tag.

Pure NumPy/OpenCV/PIL. Masks are drawn first, then outlines and boxes, then every tag, so no
tag is ever covered by another object. Line widths and text scale with the image, so a 64 px
thumbnail and a 12-megapixel photo both read well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

# Distinct, saturated colours (RGB) that stay visible on photos; objects cycle through them.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
    (0, 128, 128),
    (255, 225, 25),
    (170, 110, 40),
)
FILL_OPACITY = 0.45
FONT = cv2.FONT_HERSHEY_SIMPLEX
REFERENCE_SIDE = 640  # at this image size lines are 2 px and text is ~14 px high


class Drawable(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def box(self) -> tuple[int, int, int, int]: ...  # x_min, y_min, x_max, y_max (exclusive)
    @property
    def mask(self) -> np.ndarray | None: ...  # bool (height, width)
    @property
    def score(self) -> float | None: ...


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def draw_overlay(image: Image.Image, objects: Sequence[Drawable]) -> np.ndarray:
    """RGB uint8 (height, width, 3): the image with every object drawn on it."""
    canvas = np.array(image.convert("RGB"))  # (H, W, 3) RGB, a writable copy
    height, width = canvas.shape[:2]
    scale = max(min(height, width) / REFERENCE_SIDE, 0.25)
    line = max(1, round(2 * scale))
    regions = [_mask_region(obj.mask) for obj in objects]
    for index, (obj, region) in enumerate(zip(objects, regions, strict=True)):
        if region is not None:
            inside = obj.mask[region]  # type: ignore[index]  # (h, w) bool, the mask's bounds
            patch = canvas[region]  # a view: writing it writes the canvas
            tint = np.empty_like(patch)
            tint[:] = colour(index)
            blended = cv2.addWeighted(patch, 1 - FILL_OPACITY, tint, FILL_OPACITY, 0.0)
            np.copyto(patch, blended, where=inside[..., None])
    for index, (obj, region) in enumerate(zip(objects, regions, strict=True)):
        rgb = colour(index)
        if region is not None:
            contours, _ = cv2.findContours(
                obj.mask[region].view(np.uint8),  # type: ignore[index]
                cv2.RETR_EXTERNAL,
                cv2.CHAIN_APPROX_SIMPLE,
                offset=(region[1].start, region[0].start),
            )
            cv2.drawContours(canvas, contours, -1, rgb, max(1, line // 2))
        x0, y0, x1, y1 = obj.box
        if x1 > x0 and y1 > y0:
            cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), rgb, line)  # axis-aligned: no AA
    placed: list[tuple[int, int, int, int]] = []  # tags drawn so far: left, top, right, bottom
    for index, obj in enumerate(objects):
        placed.append(_tag(canvas, obj, colour(index), scale, placed))
    return canvas


def _mask_region(mask: np.ndarray | None) -> tuple[slice, slice] | None:
    """Rows and columns that hold the mask's pixels (masks are mostly empty), or None."""
    if mask is None:
        return None
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return None if w == 0 else (slice(y, y + h), slice(x, x + w))


def _tag(
    canvas: np.ndarray,
    obj: Drawable,
    rgb: tuple[int, int, int],
    scale: float,
    placed: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int]:
    """`label 0.91` on a filled patch at the box's top-left, inside the image, below any
    earlier tag it would cover (objects often share a corner). Returns where it went."""
    text = obj.label if obj.score is None else f"{obj.label} {obj.score:.2f}"
    font_scale = 0.5 * scale
    thickness = max(1, round(scale))
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, font_scale, thickness)
    pad = max(1, round(3 * scale))
    tag_w, tag_h = text_w + 2 * pad, text_h + baseline + 2 * pad
    height, width = canvas.shape[:2]
    x0, y0 = obj.box[0], obj.box[1]
    top = y0 - tag_h if y0 - tag_h >= 0 else y0  # above the box, or just inside it
    left = min(max(x0, 0), max(width - tag_w, 0))
    for other in sorted(placed, key=lambda r: r[1]):
        if (
            left < other[2]
            and other[0] < left + tag_w
            and top < other[3]
            and other[1] < top + tag_h
        ):
            top = other[3]  # overlaps: move below it
    top = min(max(top, 0), max(height - tag_h, 0))
    cv2.rectangle(canvas, (left, top), (left + tag_w - 1, top + tag_h - 1), rgb, cv2.FILLED)
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    origin = (left + pad, top + pad + text_h)
    cv2.putText(canvas, text, origin, FONT, font_scale, ink, thickness, cv2.LINE_AA)
    return left, top, left + tag_w, top + tag_h


def overlay_png(image: Image.Image, objects: Sequence[Drawable], compression: int = 1) -> bytes:
    """The overlay as PNG bytes (zlib level `compression`: speed first, as for masks)."""
    bgr = cv2.cvtColor(draw_overlay(image, objects), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:  # pragma: no cover - OpenCV only fails here on an empty array
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()
