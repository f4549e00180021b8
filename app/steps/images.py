"""Image bytes -> an upright RGB PIL image, refusing what is not an image or is too large."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import BadInput, NotAnImage, TooLarge

SUPPORTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"
EXIF_ORIENTATION = 0x0112  # values 5-8 swap width and height
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # upright RGB; smaller than width x height when decoded in draft mode
    width: int  # the image as sent, EXIF orientation applied: boxes and masks use this size
    height: int


def decode_image(
    data: bytes, *, max_pixels: int, draft_to: tuple[int, int] | None = None
) -> DecodedImage:
    """Decode, check the pixel count before decoding any pixels, apply EXIF orientation, make RGB.

    Multi-frame images (animated GIF, multi-page TIFF) use their first frame. With `draft_to`
    (the model's input size), a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    stays at least twice that size each way: the model never sees more pixels than that, and
    decoding a 12-megapixel photo that way is several times faster.
    """
    if not data:
        raise BadInput("The image is empty (0 bytes); send the file's contents.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"The image has too many pixels ({exc}).") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage(f"The upload is not a recognised image; send {SUPPORTED}.") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # a header cut short
        raise BadInput(f"The image is corrupt or truncated ({exc}); send a complete file.") from exc
    width, height = opened.size
    if width * height > max_pixels:
        raise TooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{max_pixels:,}. Downscale it first."
        )
    if width < 1 or height < 1:
        raise BadInput(f"The image has no pixels ({width}x{height}).")
    try:
        opened.seek(0)
        if draft_to is not None and opened.format == "JPEG":
            opened.draft("RGB", (2 * max(draft_to), 2 * max(draft_to)))
        opened.load()
        turned = opened.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
        image = ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"The image is corrupt or truncated ({exc}); send a complete file.") from exc
    upright = (height, width) if turned else (width, height)
    return DecodedImage(to_rgb(image), *upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited on white, 16/32-bit grey scaled rather than clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)  # (h, w) 16- or 32-bit integer levels
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image
