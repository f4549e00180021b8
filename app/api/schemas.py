"""The wire contract (OpenAPI): pydantic models at the boundary, and `render` into them.

The HTTP route and the command line both render a pipeline result through `render`, so a
file the CLI writes is the same JSON the service answers. The request's own fields are
`app.request.SegmentRequest`; `app.api.body_schemas` shows them per body type.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from app.pipeline import SegmentResult
    from app.steps.objects import SegmentedObject
    from app.steps.seed import SeedObject


class RleMask(BaseModel):
    """COCO RLE: `counts` a list (rle, uncompressed) or a string (coco_rle, compressed)."""

    size: tuple[int, int] = Field(description="[height, width]")
    counts: list[int] | str = Field(description="Column-major run lengths, background first.")


Mask = str | RleMask | list[list[float]] | None


class ResponseObject(BaseModel):
    label: str = Field(
        description="What the model called the object (one of the prompt's classes)."
    )
    box: tuple[int, int, int, int] = Field(
        description="[x_min, y_min, x_max, y_max] in pixels of the image as sent, EXIF applied."
    )
    mask: Mask = Field(
        description="png: base64 PNG the size of the image, 0/255; rle: COCO uncompressed RLE "
        "{size, counts} (column-major); coco_rle: COCO compressed RLE (counts a string, as "
        "pycocotools writes it); polygon: COCO polygons (outer contours; lossy); null for "
        "detect prompts, mask_format=none, or an empty box."
    )
    score: float | None = Field(
        description="Mean probability the model gave this object's 4 location and 16 mask tokens "
        "(greedy decoding), 0..1: higher is more certain. Use it to filter weak detections."
    )
    area: int = Field(
        description="Pixels in the mask (the box's pixels for detection-only objects)."
    )


class SeedMask(BaseModel):
    """One object as the service this one replaces answered it (SEGMENT_COMPAT=seed): paste
    `mask`, resized, into `coordinates` on `image`."""

    mask: str = Field(
        description="base64 PNG, 64x64, 8-bit grey: the mask decoder's own output for this "
        "object (0..255 for its -1..1; >= 128 is inside), to be resized into `coordinates`."
    )
    coordinates: tuple[int, int, int, int] = Field(
        description="[x_min, y_min, x_max, y_max] in pixels of `image` (the model's input)."
    )


class SegmentResponse(BaseModel):
    model: str
    prompt: str = Field(description="The task prompt the model saw, e.g. 'segment cat ; dog'.")
    width: int
    height: int
    text: str = Field(description="The model's raw output, loc/seg tokens included.")
    objects: list[ResponseObject]
    overlay: str | None = Field(
        None,
        description="With overlay=true: base64 PNG of the image with each object's mask, box "
        "and 'label score' drawn on it, the size of the image.",
        exclude_if=lambda value: value is None,
    )
    timings_ms: dict[str, float]
    tokens: dict[str, int] = Field(
        default_factory=dict,
        description="prompt: tokens the model read (image tokens included); generated: tokens "
        "it wrote. With per_class, summed over its sequences. Speed: generated / "
        "timings_ms.generate.",
    )
    image: str | None = Field(
        None,
        description="SEGMENT_COMPAT=seed only: base64 PNG of the model's input image (the "
        "upright upload resized to the checkpoint's square input size, e.g. 448x448), which "
        "`masks[i].coordinates` refer to.",
        exclude_if=lambda value: value is None,
    )
    masks: list[SeedMask] | None = Field(
        None,
        description="SEGMENT_COMPAT=seed only: the segmented objects in the old service's "
        "shape and meaning (detect-only objects have no mask and are not listed).",
        exclude_if=lambda value: value is None,
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "error"]
    model: str
    device: str | None = Field(description="'gpu' (Metal) or 'cpu'; null until known.")
    reason: str | None = Field(description="Why the service is not ready, and how to fix it.")
    loaded_at: datetime | None
    requests_served: int
    waiting: int = Field(description="Requests admitted and waiting for the model.")
    running: int = Field(description="Requests decoding together now (up to SEGMENT_MAX_BATCH).")
    queued: int = Field(description="Same as waiting (kept for older clients).")
    loaded: bool = Field(
        description="The model is in memory; false after an idle unload (SEGMENT_KEEP_ALIVE): "
        "the next request loads it again, and its timings_ms show `load`."
    )
    expires_at: datetime | None = Field(
        description="When the idle model will be unloaded; null while busy or kept for good."
    )
    random_weights: bool = Field(
        description="True for the `make demo` tiny random model: its outputs are meaningless."
    )
    version: str


class InstalledModelInfo(BaseModel):
    id: str = Field(description="What model_id names it by.")
    also_known_as: list[str] = Field(description="Other names model_id accepts for it.")
    default: bool = Field(description="SEGMENT_MODEL: used when a request names none.")
    loaded: bool = Field(description="In memory now (a request for another loads it).")
    input_size: int | None = Field(description="Pixels per side the model sees.")
    quantization: str | None = Field(description="e.g. '8-bit'; null for float weights.")
    bytes: int = Field(description="Size of its weight files.")
    random_weights: bool


class ModelsResponse(BaseModel):
    models: list[InstalledModelInfo]


class ErrorResponse(BaseModel):
    detail: str


def render_object(obj: SegmentedObject) -> ResponseObject:
    """The wire form of one object (an element of `objects`, or a streamed line's `object`)."""
    return ResponseObject(
        label=obj.label,
        box=obj.box,
        mask=obj.encoded_mask,
        score=None if obj.score is None else round(obj.score, 4),
        area=obj.area,
    )


def render(result: SegmentResult) -> SegmentResponse:
    """The wire form of a pipeline result (with the old service's keys when it has the image)."""
    image = masks = None
    if result.model_image_png is not None:
        image = base64.b64encode(result.model_image_png).decode()
        masks = [seed_mask(o.seed) for o in result.objects if o.seed is not None]
    return SegmentResponse(
        model=result.model,
        prompt=result.prompt,
        width=result.width,
        height=result.height,
        text=result.text,
        objects=[render_object(o) for o in result.objects],
        overlay=base64.b64encode(result.overlay_png).decode() if result.overlay_png else None,
        timings_ms=result.timings_ms,
        tokens=result.tokens,
        image=image,
        masks=masks,
    )


def seed_mask(seed: SeedObject) -> SeedMask:
    return SeedMask(mask=base64.b64encode(seed.mask_png).decode(), coordinates=seed.coordinates)
