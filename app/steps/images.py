"""Image bytes -> an upright RGB PIL image, refusing what is not an image or is too large."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import BadInput, NotAnImage, TooLarge

SUPPORTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"
# Pillow's names for those; no other decoder runs. A camera's multi-picture JPEG opens as MPO
# through the JPEG decoder (APNG through PNG, animated WebP through WebP).
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# Longest side accepted, either way: 2**16 - 1, the most the 16-bit size fields of JPEG and
# GIF can hold (WebP's hold 16,383), so no photo or panorama is refused; PNG, BMP and TIFF can
# declare more. Past it, within the pixel limit, shapes break or balloon downstream: OpenCV's
# PNG writer (libpng) refuses sides over 1,000,000; Pillow's resize to the model's input builds
# ~32 bytes of filter weights per pixel of the long side (1 x 50,000,000: 1.5 GB and 7 s); a
# mask's column-major RLE has up to ~64 runs per column (781,250 x 64: 50 million runs).
MAX_IMAGE_SIDE = 65_535
# How files of those formats begin: one that does but will not open is damaged (400), not
# some other kind of file (415).
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright; 5-8 swap width and height.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes to_rgb converts a band of rows at a time (numpy scaling, alpha compositing): the
# temporaries stay ~2 MB each (float64 levels: 8 bytes per pixel of a band) whatever the size.
BAND_PIXELS = 1 << 18
PILLOW_BLOCK_BYTES = 64 * 1024 * 1024  # see release_big_images_promptly
_WHITE = (255, 255, 255)
_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # upright RGB; smaller than width x height when decoded in draft mode
    width: int  # the image as sent, EXIF orientation applied: boxes and masks use this size
    height: int


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    draft_to: tuple[int, int] | None = None,
    max_side: int = MAX_IMAGE_SIDE,
) -> DecodedImage:
    """Worst case per request: peak ~8 bytes per pixel of `max_pixels` (WebP 16), 4 of them kept.

    Decode, check the size before decoding any pixels, apply EXIF orientation, make RGB. Only
    the formats in FORMATS are opened (anything else is 415); every decoder failure is a 4xx:
    400 for a damaged file, 413 for one too large (pixels, a side, or memory).

    Multi-frame images (animated GIF, multi-page TIFF) use their first frame. With `draft_to`
    (the model's input size), a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    stays at least twice that size each way: the model never sees more pixels than that, and
    decoding a 12-megapixel photo that way is several times faster.

    Memory: the decoded pixels in the file's own mode (at most 4 bytes a pixel in Pillow) plus
    the RGB result (4: Pillow pads RGB to 32 bits) = 400 MB at the 50 MP default, 200 MB of it
    returned; an EXIF rotation holds two copies in the file's mode for a moment, no more. WebP
    peaks at 16 (800 MB): Pillow's libwebp decoder holds two canvases and a copy of the frame.
    So a 37-byte GIF declaring a 7071 x 7071 screen costs what any 50 MP image does, no more.
    """
    if not data:
        raise BadInput("The image is empty (0 bytes); send the file's contents.")
    opened = _open(data)
    width, height = opened.size
    check_size(width, height, max_pixels=max_pixels, max_side=max_side)
    image, rgb = opened, None
    try:
        opened.seek(0)
        if draft_to is not None and opened.format in ("JPEG", "MPO"):
            opened.draft("RGB", (2 * max(draft_to), 2 * max(draft_to)))
        opened.load()
        orientation = _orientation(opened)
        method = UPRIGHT.get(orientation)
        if method is not None:
            image = opened.transpose(method)
            opened.close()  # frees its pixels now: the peak holds one copy in the file's mode
        rgb = to_rgb(image)
        if rgb is opened and opened.format == "WEBP":
            rgb = opened.copy()  # the file object keeps libwebp's two canvases: 8 bytes a pixel
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"The image has too many pixels ({exc}).") from exc
    except MemoryError as exc:
        raise TooLarge(
            f"This {width}x{height} image needs more memory to decode than is free; send a "
            "smaller one or retry later."
        ) from exc
    except Exception as exc:  # whatever a damaged file makes Pillow or numpy raise
        raise BadInput(
            f"The image is corrupt or truncated ({type(exc).__name__}: {exc}); send a complete "
            f"{SUPPORTED} file."
        ) from exc
    finally:  # the error's traceback must not keep the pixels alive
        for held in (opened, image):
            if held is not rgb:
                held.close()
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return DecodedImage(rgb, *upright)


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy open, headers only, restricted to FORMATS; every failure a 4xx."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"The image has too many pixels ({exc}).") from exc
    except UnidentifiedImageError as exc:
        kind = _looks_like(data)
        if kind is None:
            raise NotAnImage(
                f"The image sent is not a recognised image; send {SUPPORTED}."
            ) from exc
        raise BadInput(
            f"The image is corrupt or truncated (it begins like a {kind} file, but its header "
            "does not parse); send a complete file."
        ) from exc
    except MemoryError as exc:
        raise TooLarge("There is not enough memory free to read this image's header.") from exc
    except Exception as exc:  # a header cut short or damaged
        raise BadInput(
            f"The image is corrupt or truncated ({type(exc).__name__}: {exc}); send a complete "
            "file."
        ) from exc


def release_big_images_promptly() -> None:
    """Pillow keeps image memory in 16 MB blocks; glibc serves blocks that size from its heap
    arenas and keeps them after they are freed, so a burst of 50 MP requests left ~1.8 GB held
    (measured, 4 at once). Blocks of 64 MB are above malloc's mmap threshold: each big image's
    memory goes back to the system when it is freed (held after the same burst: ~0.3 GB).
    Small images are unaffected: a block is never larger than the image needs."""
    Image.core.set_block_size(PILLOW_BLOCK_BYTES)


def _looks_like(data: bytes) -> str | None:
    """The supported format whose signature the data begins with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for start, kind in SIGNATURES.items() if data.startswith(start)), None)


def check_size(width: int, height: int, *, max_pixels: int, max_side: int = MAX_IMAGE_SIDE) -> None:
    """The limits every image meets, a file's before any pixel is decoded: 413/400 if not."""
    if width * height > max_pixels:
        raise TooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{max_pixels:,}. Downscale it first."
        )
    if width < 1 or height < 1:
        raise BadInput(f"The image has no pixels ({width}x{height}).")
    if max(width, height) > max_side:
        raise TooLarge(
            f"The image is {width}x{height}; the longest side allowed is {max_side:,} pixels. "
            "Crop or downscale it first."
        )


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: upright). Damaged EXIF counts as none: the pixels are fine."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # metadata only; browsers ignore it too
        return 1
    return value if isinstance(value, int) else 1


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited on white, 16/32-bit grey scaled rather than clipped.

    Returns `image` itself when it is RGB already. Modes that need more than Pillow's own
    conversion go a band of rows at a time, so the peak is the image plus its RGB copy.
    """
    if image.mode == "RGB":
        return image
    transparent = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if not transparent and image.mode not in (*_WIDE_INT_MODES, "F"):
        return image.convert("RGB")
    top = 255.0
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "I":
        _, brightest = cast(tuple[int, int], image.getextrema())  # one band, no pixel copy
        top = 65535.0 if brightest > 255 else 255.0
    rgb = Image.new("RGB", image.size)
    rows = max(1, BAND_PIXELS // max(image.width, 1))
    for y in range(0, image.height, rows):
        band = image.crop((0, y, image.width, min(y + rows, image.height)))
        rgb.paste(_band_to_rgb(band, top), (0, y))
    return rgb


def _band_to_rgb(band: Image.Image, top: float) -> Image.Image:
    if band.mode in _WIDE_INT_MODES:
        pixels = np.asarray(band, dtype=np.float64)  # (h, w) 16- or 32-bit integer levels
        return Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if band.mode == "F":
        pixels = np.asarray(band, dtype=np.float64)  # (h, w) levels in 0..1
        return Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
    rgba = band.convert("RGBA")  # alpha modes, and a palette with a transparent entry
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
