"""Image bytes for tests, made in memory."""

from __future__ import annotations

import io
from pathlib import Path

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


def noise_photo(path: Path, min_bytes: int) -> Path:
    """A JPEG of at least `min_bytes`: noise does not compress, so it stands in for a phone
    photo's size (the service's limits and the command line's are about bytes)."""
    side = 512
    while True:
        pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=95)
        if path.stat().st_size >= min_bytes:
            return path
        side = int(side * 1.5)
