"""`SegmentRequest`: one request, whichever face it came through (form, JSON, CLI, Python).

Every field a caller may set exists here once: the HTTP body parser builds it from a form or a
JSON object, the CLI and `Segmenter` build it from their arguments, and the CLI's `--server`
backend sends its fields. Values are checked where they are typed (pydantic); what needs the
settings or the model (prompt length, installed models, the image itself) the pipeline checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.errors import InvalidRequest, shorten
from app.steps.masks import MaskFormat

MAX_MODEL_ID_CHARS = 200  # `owner/name` ids are far shorter; longer text is never a model id

ImageInput = bytes | Image.Image  # an encoded file (upload, base64 body, path read), or pixels


class SegmentRequest(BaseModel):
    """What to find in which image, and how to answer."""

    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)

    prompt: str = Field(
        min_length=1,
        description="What to find: 'cat', 'cat ; dog', or 'detect car'.",
        examples=["cat ; dog"],
    )
    image: Annotated[ImageInput | None, SkipJsonSchema()] = Field(
        None, exclude=True, repr=False
    )  # the wire names it per body type (image_file, image): see app.api.request_body
    image_url: str | None = Field(None, description="Or an http(s) URL to fetch the image from.")
    model_id: str | None = Field(
        None,
        max_length=MAX_MODEL_ID_CHARS,
        description="Any installed model, by an id or alias GET /models lists; loaded on "
        "demand if another is in memory. Default: SEGMENT_MODEL.",
    )
    mask_format: MaskFormat = Field(
        "png", description="png, rle, coco_rle, polygon, or none (no masks)."
    )
    overlay: bool = Field(False, description="Also return a PNG of the objects on the image.")
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on generated tokens (about 24 per object; at least 21 for segment, 5 "
        "for detect).",
    )
    stream: bool = Field(
        False, description="Answer in NDJSON lines: each object as it is found, then 'done'."
    )
    per_class: bool = Field(
        False,
        description="Look for each class of 'cat ; dog' on its own: one sequence per class, "
        "decoded together, so a class the model would skip in a joint prompt is still looked "
        "for. Each class costs its own prefill; decoding is shared.",
    )

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        """JSON's true is not a number (pydantic would read it as 1)."""
        if isinstance(value, bool):
            raise ValueError("must be a whole number")
        return value

    @field_validator("image_url", "model_id", "max_new_tokens", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: object) -> object:
        """A form sends empty optional fields as "" (Swagger's Try it out does): not given."""
        return None if isinstance(value, str) and not value.strip() else value

    def wire_fields(self) -> dict[str, str]:
        """The fields as form values, for sending this request to a running service."""
        values = self.model_dump(exclude_none=True, exclude={"image"})
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


def parse_request(fields: Mapping[str, Any]) -> SegmentRequest:
    """A request from a body's fields; what is wrong is one 422 that names every bad field."""
    try:
        return SegmentRequest.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            problem(e["loc"], e["type"], e.get("ctx"), e["msg"]) for e in exc.errors()
        )
        raise InvalidRequest(f"Invalid request: {problems}") from None


# How a field's problem reads, by pydantic's error type; others fall back to pydantic's words.
_PHRASES = {
    "missing": "is missing or empty; it is required.",
    "string_type": "must be a string.",
    "bool_type": "must be true or false.",
    "bool_parsing": "must be true or false.",
    "int_type": "must be a whole number.",
    "int_parsing": "must be a whole number.",
    "int_from_float": "must be a whole number.",
}


def problem(loc: tuple[int | str, ...], kind: str, ctx: dict[str, Any] | None, msg: str) -> str:
    """One field's problem in plain words, naming the field (`body` when it is the whole)."""
    name = ".".join(str(part) for part in loc) or "body"
    context = ctx or {}
    if kind == "string_too_short" and context.get("min_length") == 1:
        kind = "missing"
    if kind == "value_error":  # our own validators' words
        return f"{name}: {shorten(msg.removeprefix('Value error, '), 200)}."
    if kind in _PHRASES:
        return f"{name} {_PHRASES[kind]}" if kind == "missing" else f"{name}: {_PHRASES[kind]}"
    if kind == "literal_error":
        return f"{name}: must be one of {context.get('expected', '')}."
    if kind == "greater_than_equal":
        return f"{name}: must be at least {context.get('ge')}."
    if kind == "string_too_long":
        return f"{name}: is longer than {context.get('max_length')} characters."
    return f"{name}: {shorten(msg, 200)}."
