"""The wire contract (OpenAPI): pydantic models at the HTTP boundary only."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Mask = str | dict[str, list[int]] | list[list[float]] | None


class SegmentObject(BaseModel):
    label: str = Field(
        description="What the model called the object (one of the prompt's classes)."
    )
    box: tuple[int, int, int, int] = Field(
        description="[x_min, y_min, x_max, y_max] in pixels of the image as sent, EXIF applied."
    )
    mask: Mask = Field(
        description="png: base64 PNG the size of the image, 0/255; rle: COCO uncompressed RLE "
        "{size, counts} (column-major); polygon: COCO polygons; null for detect prompts, "
        "mask_format=none, or an empty box."
    )
    score: float | None = Field(
        description="Mean probability the model gave this object's 4 location and 16 mask tokens "
        "(greedy decoding), 0..1: higher is more certain. Use it to filter weak detections."
    )


class SegmentResponse(BaseModel):
    model: str
    prompt: str = Field(description="The task prompt the model saw, e.g. 'segment cat ; dog'.")
    width: int
    height: int
    text: str = Field(description="The model's raw output, loc/seg tokens included.")
    objects: list[SegmentObject]
    timings_ms: dict[str, float]


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "error"]
    model: str
    device: str | None = Field(description="'gpu' (Metal) or 'cpu'; null until known.")
    reason: str | None = Field(description="Why the service is not ready, and how to fix it.")
    loaded_at: datetime | None
    requests_served: int
    queued: int
    random_weights: bool = Field(
        description="True for the `make demo` tiny random model: its outputs are meaningless."
    )
    version: str


class ErrorResponse(BaseModel):
    detail: str
