"""Any bytes are a decoded image or a clear 4xx, never a 500; every shape the limits allow
encodes as a mask and an overlay. Deterministic: fixed files, fixed damage, seeded randomness."""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from app.errors import ServiceError, TooLarge
from app.steps.images import MAX_IMAGE_SIDE, DecodedImage, decode_image
from app.steps.masks import (
    decode_coco_rle,
    decode_png,
    decode_rle,
    encode_coco_rle,
    encode_png,
    encode_polygons,
    encode_rle,
    place_mask,
)
from app.steps.overlay import overlay_png
from tests.images import gradient, image_bytes

LIMIT = 50_000_000
CLEAR = {400, 413, 415}
HEADER_BYTES = 96  # every byte of this much of each file is damaged, three ways
CUTS = 24  # truncations spread over the file past its first 48 bytes
RANDOM_DAMAGE = 40  # files per seed with 1-4 random bytes replaced


def _small(mode: str = "RGB") -> Image.Image:
    return gradient(23, 17, mode)


def _frames(fmt: str) -> bytes:
    first, second = gradient(12, 9), gradient(12, 9).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image_bytes(first, fmt, save_all=True, append_images=[second])


def _rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()


def _levels(mode: str) -> Image.Image:
    ramp = np.arange(23 * 17, dtype=np.uint16).reshape(17, 23) * 150  # (17, 23) 16-bit
    return Image.fromarray(ramp).convert(mode) if mode != "I;16" else Image.fromarray(ramp)


# Small files of every listed format, in the modes and variants their decoders branch on.
SEEDS: dict[str, Callable[[], bytes]] = {
    "png_rgb": lambda: image_bytes(_small()),
    "png_rgba": lambda: image_bytes(_small("RGBA")),
    "png_p_transparent": lambda: image_bytes(_small("P"), transparency=3),
    "png_l": lambda: image_bytes(_small("L")),
    "png_1": lambda: image_bytes(_small("1")),
    "png_i16": lambda: image_bytes(_levels("I;16")),
    "apng": lambda: _frames("PNG"),
    "jpeg": lambda: image_bytes(_small(), "JPEG"),
    "jpeg_l": lambda: image_bytes(_small("L"), "JPEG"),
    "jpeg_cmyk": lambda: image_bytes(_small("CMYK"), "JPEG"),
    "jpeg_progressive": lambda: image_bytes(_small(), "JPEG", progressive=True),
    "jpeg_exif_rotated": lambda: image_bytes(_small(), "JPEG", exif=_rotated()),
    "mpo": lambda: image_bytes(_small(), "MPO", save_all=True, append_images=[_small()]),
    "webp": lambda: image_bytes(_small(), "WEBP"),
    "webp_lossless_rgba": lambda: image_bytes(_small("RGBA"), "WEBP", lossless=True),
    "webp_animated": lambda: _frames("WEBP"),
    "gif": lambda: image_bytes(_small("P"), "GIF"),
    "gif_animated": lambda: _frames("GIF"),
    "bmp": lambda: image_bytes(_small(), "BMP"),
    "bmp_p": lambda: image_bytes(_small("P"), "BMP"),
    "bmp_1": lambda: image_bytes(_small("1"), "BMP"),
    "bmp_rgba": lambda: image_bytes(_small("RGBA"), "BMP"),
    "tiff": lambda: image_bytes(_small(), "TIFF"),
    "tiff_lzw": lambda: image_bytes(_small(), "TIFF", compression="tiff_lzw"),
    "tiff_deflate": lambda: image_bytes(_small(), "TIFF", compression="tiff_adobe_deflate"),
    "tiff_jpeg": lambda: image_bytes(_small(), "TIFF", compression="jpeg"),
    "tiff_packbits": lambda: image_bytes(_small("L"), "TIFF", compression="packbits"),
    "tiff_group4": lambda: image_bytes(_small("1"), "TIFF", compression="group4"),
    "tiff_i16": lambda: image_bytes(_levels("I;16"), "TIFF"),
    "tiff_i32": lambda: image_bytes(_levels("I"), "TIFF"),
    "tiff_float": lambda: image_bytes(_levels("F"), "TIFF"),
    "tiff_cmyk": lambda: image_bytes(_small("CMYK"), "TIFF"),
    "tiff_multipage": lambda: _frames("TIFF"),
    "tiff_exif_rotated": lambda: image_bytes(_small(), "TIFF", exif=_rotated()),
}


def _damaged(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """Truncations, header bytes flipped, and seeded random damage: (what was done, bytes)."""
    n = len(data)
    for cut in sorted({*range(1, min(n, 48)), *range(48, n, max(1, n // CUTS))}):
        yield f"cut at {cut}", data[:cut]
    for at in range(min(n, HEADER_BYTES)):
        for value in (data[at] ^ 0x01, data[at] ^ 0x80, 0xFF):
            yield f"byte {at} = {value:#04x}", data[:at] + bytes([value]) + data[at + 1 :]
    rng = random.Random(name)  # a str seed is stable across runs and platforms
    for index in range(RANDOM_DAMAGE):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(n)] = rng.randrange(256)
        yield f"random damage #{index}", bytes(damaged)


def _problem(data: bytes) -> str | None:
    """None when `data` decodes to a consistent RGB image or is refused with a clear 4xx; else
    what went wrong."""
    try:
        decoded = decode_image(data, max_pixels=LIMIT)
    except ServiceError as exc:
        return None if exc.status_code in CLEAR else f"status {exc.status_code}: {exc.detail}"
    except Exception as exc:  # what this file hunts: it would be a 500
        return f"{type(exc).__name__}: {exc}"
    image = decoded.image
    if image.mode != "RGB" or image.size != (decoded.width, decoded.height):
        return f"decoded {image.mode} {image.size} for {decoded.width}x{decoded.height}"
    return None


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of the damage it skips
@pytest.mark.parametrize("name", SEEDS)
def test_damaged_files_decode_or_are_a_clear_4xx(name: str) -> None:
    data = SEEDS[name]()
    assert _problem(data) is None, "the undamaged file must decode"
    problems = [
        f"{what}: {found}" for what, bad in _damaged(name, data) if (found := _problem(bad))
    ]
    assert not problems, f"{len(problems)} damaged {name} files escaped: {problems[:5]}"


def test_a_tiff_tag_of_the_wrong_type_is_400() -> None:
    """Found by the sweep above: BitsPerSample made a RATIONAL, a TypeError deep in Pillow."""
    data = bytearray(SEEDS["tiff"]())
    data[72] ^= 0x01
    with pytest.raises(ServiceError) as refused:
        decode_image(bytes(data), max_pixels=LIMIT)
    assert refused.value.status_code == 400


def _gif_screen(width: int, height: int) -> bytes:
    """A GIF declaring a width x height screen with one 1 x 1 frame in it (37 bytes)."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b";"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    empty = zlib.compress(b"")
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", empty)
        + _chunk(b"IEND", b"")
    )


def _bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(image_bytes(_small(), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER width, height
    return bytes(data)


def _status(data: bytes, max_pixels: int = LIMIT) -> int:
    try:
        decode_image(data, max_pixels=max_pixels)
    except ServiceError as exc:
        return exc.status_code
    return 200


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (_png_header_only(0, 5), 400),
        (_png_header_only(5, 0), 400),
        (_bmp_declaring(0, 17), 400),
        (_bmp_declaring(23, 0), 400),
        (_gif_screen(0, 0)[:6] + b"\x00" * 7, 400),  # screen descriptor only, 0 x 0
    ],
    ids=["png 0 wide", "png 0 high", "bmp 0 wide", "bmp 0 high", "gif 0 x 0, no frame"],
)
def test_zero_sized_images_are_400(data: bytes, status: int) -> None:
    assert _status(data) == status


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (_gif_screen(7071, 7071), 200),  # 49,999,041 pixels: just under the limit
        (_gif_screen(7072, 7072), 413),
        (_gif_screen(65535, 65535), 413),
        (_gif_screen(MAX_IMAGE_SIDE, LIMIT // MAX_IMAGE_SIDE), 200),
        (_gif_screen(MAX_IMAGE_SIDE, LIMIT // MAX_IMAGE_SIDE + 1), 413),
        (_png_header_only(2**31 - 1, 2**31 - 1), 413),
        (_png_header_only(LIMIT, 1), 413),
        (_png_header_only(1, LIMIT), 413),
        (_bmp_declaring(1, LIMIT), 413),
        (_bmp_declaring(-LIMIT, 1), 413),
    ],
    ids=[
        "gif 7071x7071",
        "gif 7072x7072",
        "gif 65535x65535",
        "gif at both limits",
        "gif a row past the pixel limit",
        "png 2^31-1 square",
        "png 50M x 1",
        "png 1 x 50M",
        "bmp 1 x 50M",
        "bmp -50M x 1",
    ],
)
def test_huge_declared_sizes_decode_or_are_413_before_decoding(data: bytes, status: int) -> None:
    assert _status(data) == status


@dataclass(frozen=True)
class _Object:
    label: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None
    score: float | None


def _encodes_everywhere(decoded: DecodedImage) -> None:
    """What the pipeline does with an image of this shape: the model's resize, a mask over the
    whole image placed, encoded four ways and decoded back, and the overlay."""
    width, height = decoded.width, decoded.height
    assert decoded.image.resize((448, 448), Image.Resampling.BICUBIC).size == (448, 448)
    raw = np.cos(np.linspace(0, 12, 64 * 64, dtype=np.float32)).reshape(64, 64)  # (64, 64)
    mask = place_mask(raw, (0, 0, width, height), width, height)
    assert mask is not None and mask.shape == (height, width)
    assert np.array_equal(decode_png(encode_png(mask)), mask)
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)
    assert np.array_equal(decode_coco_rle(encode_coco_rle(mask)), mask)
    for polygon in encode_polygons(mask):
        assert len(polygon) >= 6 and max(polygon[0::2]) < width and max(polygon[1::2]) < height
    drawn = overlay_png(decoded.image, [_Object("x", (0, 0, width, height), mask, 0.5)])
    with Image.open(io.BytesIO(drawn)) as picture:
        assert picture.size == (width, height) and picture.mode == "RGB"


SHAPES = [
    (1, 1),
    (2, 1),
    (1, 2),
    (MAX_IMAGE_SIDE, 1),
    (1, MAX_IMAGE_SIDE),
    (MAX_IMAGE_SIDE, 3),
    (3, MAX_IMAGE_SIDE),
    (MAX_IMAGE_SIDE, 64),  # the mask is enlarged both ways here: OpenCV's resize
    (64, MAX_IMAGE_SIDE),
]


def _shaped(size: tuple[int, int], fmt: str) -> bytes:
    """A file of that shape, quick to make: a GIF screen, or flat grey (content is no matter)."""
    return _gif_screen(*size) if fmt == "GIF" else image_bytes(Image.new("L", size, 128), fmt)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "GIF"])
@pytest.mark.parametrize("size", SHAPES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_every_shape_within_the_limits_encodes(size: tuple[int, int], fmt: str) -> None:
    decoded = decode_image(_shaped(size, fmt), max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == size
    _encodes_everywhere(decoded)


@pytest.mark.parametrize("size", [(65500, 1), (1, 65500), (65500, 16)])  # libjpeg's own limit
def test_extreme_jpegs_decode_drafted_and_encode(size: tuple[int, int]) -> None:
    data = image_bytes(gradient(*size), "JPEG")
    drafted = decode_image(data, max_pixels=LIMIT, draft_to=(448, 448))
    assert (drafted.width, drafted.height) == size
    _encodes_everywhere(decode_image(data, max_pixels=LIMIT))


@pytest.mark.parametrize(
    "size", [(MAX_IMAGE_SIDE + 1, 1), (1, MAX_IMAGE_SIDE + 1), (1_000_001, 1), (1, 1_000_001)]
)
@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_shapes_past_the_side_limit_are_413_naming_it(size: tuple[int, int], fmt: str) -> None:
    """Once a 500: OpenCV's PNG writer refuses sides past 1,000,000 (masks and overlays)."""
    data = image_bytes(Image.new("1", size), fmt)
    with pytest.raises(TooLarge, match="longest side allowed is 65,535 pixels"):
        decode_image(data, max_pixels=LIMIT)


@pytest.mark.slow  # 50 MP each: ~5 s and ~1 GB
@pytest.mark.parametrize(
    "size", [(MAX_IMAGE_SIDE, LIMIT // MAX_IMAGE_SIDE), (LIMIT // MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)]
)
def test_the_most_extreme_shape_at_the_pixel_limit_encodes(size: tuple[int, int]) -> None:
    decoded = decode_image(_gif_screen(*size), max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == size
    _encodes_everywhere(decoded)
