"""Mask placement at the image's own resolution, and the wire encodings. Pure numpy/OpenCV/PIL."""

from __future__ import annotations

import base64
from typing import Literal

import cv2
import numpy as np
from PIL import Image

MaskFormat = Literal["png", "rle", "polygon", "none"]


def place_mask(
    raw: np.ndarray, box: tuple[int, int, int, int], width: int, height: int
) -> np.ndarray | None:
    """Resize a raw 64x64 decoder output into its pixel box and threshold it.

    Thresholding the raw output at 0 equals big_vision's 0.5 on `x * 0.5 + 0.5`. Bilinear, as
    big_vision does: OpenCV's when enlarging both ways (same values, several times faster),
    PIL's when shrinking, because it antialiases and OpenCV's bilinear does not. Returns a
    [height, width] bool mask that is False outside the box, or None for an empty box.
    """
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return None
    size = (x1 - x0, y1 - y0)
    raw = raw.astype(np.float32, copy=False)
    if size[0] >= raw.shape[1] and size[1] >= raw.shape[0]:
        resized = cv2.resize(raw, size, interpolation=cv2.INTER_LINEAR)
    else:
        resized = np.asarray(Image.fromarray(raw, mode="F").resize(size, Image.Resampling.BILINEAR))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = resized > 0.0  # (box_h, box_w)
    return mask


def encode_png(mask: np.ndarray, compression: int = 1) -> str:
    """Base64 of a single-channel 8-bit PNG (0 / 255), the size of the image.

    No row filter and run-length zlib: a two-valued image needs neither prediction nor string
    matching, and this is ~3x faster than OpenCV's defaults and half the size (12 MP: ~58 ms).
    """
    params = [
        cv2.IMWRITE_PNG_COMPRESSION,
        compression,
        cv2.IMWRITE_PNG_FILTER,
        cv2.IMWRITE_PNG_FILTER_NONE,
        cv2.IMWRITE_PNG_STRATEGY,
        cv2.IMWRITE_PNG_STRATEGY_RLE,
    ]
    ok, buffer = cv2.imencode(".png", mask.view(np.uint8) * 255, params)
    if not ok:  # pragma: no cover - OpenCV only fails here on an empty array
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buffer.tobytes()).decode("ascii")


def encode_rle(mask: np.ndarray) -> dict[str, list[int]]:
    """COCO uncompressed RLE: column-major run lengths starting with a run of zeros."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)  # (h * w,) column-major
    changes = np.flatnonzero(np.diff(flat)) + 1
    boundaries = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(boundaries).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]  # COCO's counts always start with background
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def encode_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours as COCO polygons: flat [x0, y0, x1, y1, ...] lists, at least 3 points each."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def encode_mask(
    mask: np.ndarray, fmt: MaskFormat, png_compression: int = 1
) -> str | dict[str, list[int]] | list[list[float]] | None:
    """The mask in the requested wire format (None for `none`)."""
    if fmt == "png":
        return encode_png(mask, png_compression)
    if fmt == "rle":
        return encode_rle(mask)
    if fmt == "polygon":
        return encode_polygons(mask)
    return None
