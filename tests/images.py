"""Image bytes for tests, made in memory."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def image_bytes(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48, mode: str = "RGB") -> Image.Image:
    """A deterministic colourful image (so EXIF rotations and crops are detectable)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1
    ).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def exif_rotated_jpeg(width: int = 64, height: int = 48, orientation: int = 6) -> bytes:
    """A JPEG stored `width` x `height` whose EXIF says to rotate it (6: 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return image_bytes(gradient(width, height), "JPEG", exif=exif.tobytes())
