"""Image bytes -> an upright RGB PIL image, refusing what is not an image or is too large."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import BadInput, NotAnImage, TooLarge

SUPPORTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"
_WHITE = (255, 255, 255)


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode, check the pixel count before decoding any pixels, apply EXIF orientation, make RGB.

    Multi-frame images (animated GIF, multi-page TIFF) use their first frame.
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
        opened.load()
        image = ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"The image is corrupt or truncated ({exc}); send a complete file.") from exc
    return to_rgb(image)


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
