"""OpenAPI's requestBody for `POST /segment`: `SegmentRequest`'s fields as a form (the image an
upload, `image_file`) and as JSON (the image base64, `image`).

Swagger UI's "Try it out" fills every form field with a sample of its schema ("string" for
text, the minimum for a number), and sends them all: a pre-filled `image_url=string` then
competes with the upload. So each optional form field carries the example "" (an empty form
field means "not given" to the service), and the JSON body carries one whole example request.
Every example here is a request the service answers with 200.
"""

from __future__ import annotations

import base64
import io
from functools import cache
from typing import Any

from PIL import Image

from app.request import SegmentRequest

IMAGE_FILE = "The image: PNG, JPEG, WebP, GIF (first frame), BMP or TIFF. Or send image_url."
IMAGE_BASE64 = "The image file's bytes, base64, or a data:image/...;base64, URL. Or image_url."
# A form field left empty: what a form sends for an optional field nobody filled in.
EMPTY_FIELD = {"type": "string", "maxLength": 0, "description": "Empty: not given."}
NULL = {"type": "null"}


def request_body_schemas() -> dict[str, Any]:
    """The requestBody object: both body types, with examples that are valid requests."""
    fields = SegmentRequest.model_json_schema()
    image_file = {"type": "string", "format": "binary", "description": IMAGE_FILE}
    image = {"type": "string", "description": IMAGE_BASE64}
    form_fields = {name: form_field(schema) for name, schema in fields["properties"].items()}
    form = {
        **fields,
        "title": "SegmentForm",
        "properties": {**form_fields, "image_file": image_file},
    }
    body = {
        **fields,
        "title": "SegmentJson",
        "properties": {**fields["properties"], "image": image},
    }
    return {
        "required": True,
        "content": {
            "application/json": {"schema": body, "example": json_example()},
            "multipart/form-data": {"schema": form},
        },
    }


def form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field (value or null) as a form field that starts empty: a form has no
    null, it leaves the field empty."""
    options = schema.get("anyOf", [])
    if NULL not in options:
        return schema
    field = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    [value] = [option for option in options if option != NULL]
    if value.get("type") == "string":
        return {**field, **value, "examples": [""]}
    return {**field, "anyOf": [value, EMPTY_FIELD], "examples": [""]}


@cache
def json_example() -> dict[str, Any]:
    """A whole JSON request: Swagger's Try it out sends it as it stands."""
    return {"prompt": "cat ; dog", "image": example_png_base64(), "mask_format": "rle"}


def example_png_base64() -> str:
    """A small PNG (a 64x48 gradient with a dark square), base64: a real image, so the example
    is a real request."""
    image = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    image.paste((40, 40, 50), (16, 12, 40, 36))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()
