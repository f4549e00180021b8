"""Mask placement at the image's own resolution, and the wire encodings. Pure numpy/OpenCV/PIL."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

MaskFormat = Literal["png", "rle", "coco_rle", "polygon", "none"]
# libpng's default user limit on either side: OpenCV's PNG writer (and many readers) refuse
# more. Uploads never get near it (images.MAX_IMAGE_SIDE); an in-process caller's image can.
LIBPNG_MAX_SIDE = 1_000_000


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
    np.greater(resized, 0.0, out=mask[y0:y1, x0:x1])  # (box_h, box_w), no bool temporary
    return mask


def encode_png(mask: np.ndarray, compression: int = 1) -> str:
    """Base64 of a single-channel 8-bit PNG (0 / 255), the size of the image.

    No row filter and run-length zlib: a two-valued image needs neither prediction nor string
    matching, and this is ~3x faster than OpenCV's defaults and half the size (12 MP: ~58 ms).
    Sides past LIBPNG_MAX_SIDE go through Pillow's PNG writer instead.
    """
    params = [
        cv2.IMWRITE_PNG_COMPRESSION,
        compression,
        cv2.IMWRITE_PNG_FILTER,
        cv2.IMWRITE_PNG_FILTER_NONE,
        cv2.IMWRITE_PNG_STRATEGY,
        cv2.IMWRITE_PNG_STRATEGY_RLE,
    ]
    pixels = mask.view(np.uint8) * 255  # (h, w) 0 / 255
    if max(mask.shape) > LIBPNG_MAX_SIDE:  # Pillow's writer has no such limit
        written = io.BytesIO()
        Image.fromarray(pixels).save(written, "PNG", compress_level=compression)
        return base64.b64encode(written.getvalue()).decode("ascii")
    ok, buffer = cv2.imencode(".png", pixels, params)
    if not ok:  # pragma: no cover - OpenCV only fails here on an empty array
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buffer.tobytes()).decode("ascii")


def _column_major_runs(mask: np.ndarray) -> list[int]:
    """Run lengths in column-major order, the first a run of zeros (COCO's convention).

    Any nonzero pixel is foreground, so a 0/255 mask encodes as its bool form does. OpenCV
    transposes one-byte pixels ~13x faster than NumPy's column-major copy (12 MP: 5 vs 65 ms).
    """
    binary = (mask if mask.dtype == bool else mask != 0).view(np.uint8)
    # OpenCV returns None for an empty array; an empty array has no order to fix.
    flat = cv2.transpose(binary).ravel() if binary.size else binary.ravel()  # (w * h,)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate(([0], changes, [flat.size]))
    counts: list[int] = np.diff(boundaries).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]  # COCO's counts always start with background
    return counts


def encode_rle(mask: np.ndarray) -> dict[str, list[int]]:
    """COCO uncompressed RLE: column-major run lengths starting with a run of zeros."""
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _column_major_runs(mask)}


def encode_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE, byte for byte what `pycocotools.mask.encode` writes (as a str).

    pycocotools' rleToString: each count (from the fourth on, minus the count two before) in
    5-bit groups, low first, 0x20 marking "more follows", sign-extended from bit 0x10, each
    group written as chr(48 + group).
    """
    counts = _column_major_runs(mask)
    out: list[str] = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: a negative value ends at -1
            more = value != -1 if group & 0x10 else value != 0
            out.append(chr(48 + (group | (0x20 if more else 0))))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(out)}


def decode_coco_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """The bool (h, w) mask of a compressed COCO RLE (pycocotools' rleFrString, inverted)."""
    text: str = rle["counts"]
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position, shift = position + 1, shift + 5
            if not more and group & 0x10:
                value |= -1 << shift  # sign-extend
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return decode_rle({"size": rle["size"], "counts": counts})


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """The bool (h, w) mask of an uncompressed COCO RLE."""
    height, width = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1  # runs alternate, background first
    flat = np.repeat(values, rle["counts"])  # (h * w,) column-major
    return flat.reshape((width, height)).T


def decode_png(data: str) -> np.ndarray:
    """The bool mask of a base64 PNG mask (what mask_format=png sends)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))) > 0


def encode_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours as COCO polygons: flat [x0, y0, x1, y1, ...] lists, at least 3 points each."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def encode_mask(
    mask: np.ndarray, fmt: MaskFormat, png_compression: int = 1
) -> str | dict[str, Any] | list[list[float]] | None:
    """The mask in the requested wire format (None for `none`)."""
    if fmt == "png":
        return encode_png(mask, png_compression)
    if fmt == "rle":
        return encode_rle(mask)
    if fmt == "coco_rle":
        return encode_coco_rle(mask)
    if fmt == "polygon":
        return encode_polygons(mask)
    return None
