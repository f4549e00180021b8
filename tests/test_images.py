"""Image decoding: formats, modes, orientation, and refusals."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.errors import BadInput, NotAnImage, TooLarge
from app.steps.images import decode_image
from tests.images import exif_rotated_jpeg, gradient, image_bytes

LIMIT = 50_000_000


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("PNG", "RGB"),
        ("JPEG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "LA"),
        ("PNG", "P"),
        ("WEBP", "RGB"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("JPEG", "CMYK"),
        ("GIF", "P"),
        ("PNG", "1"),
    ],
)
def test_common_formats_and_modes_become_rgb(fmt: str, mode: str) -> None:
    image = decode_image(image_bytes(gradient(40, 30, mode), fmt), max_pixels=LIMIT).image
    assert image.mode == "RGB" and image.size == (40, 30)


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image = decode_image(image_bytes(rgba), max_pixels=LIMIT).image
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    levels = np.full((4, 4), 32768, np.uint16)  # mid grey in 16 bits
    image = decode_image(image_bytes(Image.fromarray(levels)), max_pixels=LIMIT).image
    assert abs(image.getpixel((0, 0))[0] - 128) <= 1


def test_exif_orientation_is_applied() -> None:
    image = decode_image(exif_rotated_jpeg(64, 48, orientation=6), max_pixels=LIMIT).image
    assert image.size == (48, 64)


def test_first_frame_of_an_animated_gif() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    r, _g, b = decode_image(buffer.getvalue(), max_pixels=LIMIT).image.getpixel((5, 5))
    assert r > 200 and b < 50


def test_empty_upload() -> None:
    with pytest.raises(BadInput, match="empty"):
        decode_image(b"", max_pixels=LIMIT)


@pytest.mark.parametrize("data", [b"hello, I am text", b"%PDF-1.7\n...", b"<html></html>"])
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        decode_image(data, max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt: str) -> None:
    data = image_bytes(gradient(200, 200), fmt)
    with pytest.raises(BadInput, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but carries almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(TooLarge, match="pixels"):
        decode_image(_png_header_only(30000, 30000), max_pixels=LIMIT)


def test_pixel_limit_is_configurable() -> None:
    with pytest.raises(TooLarge, match="limit is 100"):
        decode_image(image_bytes(gradient(20, 20)), max_pixels=100)


def test_tiny_and_extreme_aspect_images_decode() -> None:
    assert decode_image(image_bytes(gradient(1, 1)), max_pixels=LIMIT).image.size == (1, 1)
    assert decode_image(image_bytes(gradient(10000, 1)), max_pixels=LIMIT).image.size == (10000, 1)


@pytest.mark.parametrize("orientation", [1, 6])
def test_jpeg_draft_decodes_small_but_reports_the_full_upright_size(orientation: int) -> None:
    data = exif_rotated_jpeg(2000, 1500, orientation=orientation)
    full = decode_image(data, max_pixels=LIMIT)
    draft = decode_image(data, max_pixels=LIMIT, draft_to=(224, 224))
    upright = (1500, 2000) if orientation == 6 else (2000, 1500)
    assert (full.width, full.height) == (draft.width, draft.height) == upright
    assert full.image.size == upright
    assert min(draft.image.size) >= 448 and draft.image.size[0] * 2 <= upright[0]  # DCT-scaled
    # What the model sees (after its own resize) barely changes.
    a = np.asarray(full.image.resize((224, 224), Image.Resampling.BICUBIC), np.float32)
    b = np.asarray(draft.image.resize((224, 224), Image.Resampling.BICUBIC), np.float32)
    assert np.abs(a - b).mean() < 2.0  # of 255


def test_draft_leaves_other_formats_alone() -> None:
    png = decode_image(image_bytes(gradient(1000, 800)), max_pixels=LIMIT, draft_to=(224, 224))
    assert png.image.size == (1000, 800)
