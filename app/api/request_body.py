"""`POST /segment`'s body, multipart form or JSON, parsed once into a `SegmentRequest`.

    form:  prompt=cat  image_file=<upload> (or image_url=...)  mask_format=rle ...
    JSON:  {"prompt": "cat", "image": "<base64 or data:image/...;base64,...>", ...}

One dependency reads either body type into the one typed request, so both meet the same
checks, limits and answer; a body of any other type gets a 415 naming the accepted ones. Errors
name the fields as the caller sent them (`image_file` in a form, `image` in JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from app.api.guards import too_large_detail
from app.api.misnamed import misnamed_in_form, misnamed_in_json
from app.config import Settings
from app.errors import BadInput, InvalidRequest, TooLarge, UnsupportedMedia, shorten
from app.request import SegmentRequest, parse_request

FORM_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})
JSON_TYPE = "application/json"
TEXT_FIELDS = tuple(name for name in SegmentRequest.model_fields if name != "image")
READ_CHUNK_BYTES = 1024 * 1024
MAX_FORM_FIELDS = 32  # the form has 8; a few unknown ones are ignored, thousands are refused


async def segment_request(request: Request, settings: Settings) -> SegmentRequest:
    """The request in the body, whatever its type; 4xx naming what is wrong."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in FORM_TYPES:
        return await _from_form(request, settings.max_upload_bytes)
    if media_type == JSON_TYPE:
        return _from_json(await _body(request), settings.max_upload_bytes)
    shown = shorten(media_type) if media_type else "no Content-Type"
    raise UnsupportedMedia(
        f"POST /segment takes multipart/form-data (an upload) or application/json "
        f"(base64 'image'), not {shown}."
    )


async def _body(request: Request) -> bytes:
    """The whole body, read from its stream: `request.body()` would keep a copy on the request
    for as long as it lives (the limit on its size is the body-limit guard's)."""
    chunks = [chunk async for chunk in request.stream()]
    return b"".join(chunks)


async def _from_form(request: Request, max_upload_bytes: int) -> SegmentRequest:
    form = await request.form(max_files=2, max_fields=MAX_FORM_FIELDS)
    try:
        fields: dict[str, Any] = {}
        for name in TEXT_FIELDS:
            value = form.get(name)
            if isinstance(value, UploadFile) and name == "image_url":
                raise BadInput(misnamed_in_form([(name, value)]).strip())
            if isinstance(value, UploadFile):
                raise InvalidRequest(f"Invalid request: {name}: must be text, not a file.")
            if value is not None:
                fields[name] = value
        upload = form.get("image_file")
        if upload is not None and not isinstance(upload, UploadFile):
            raise BadInput("`image_file` must be a file upload (multipart/form-data), not text.")
        if upload is None and not _given(fields.get("image_url")):
            raise BadInput(
                "Send exactly one of `image_file` (an upload) or `image_url`; the form has "
                "neither." + misnamed_in_form(form.multi_items())
            )
        if upload is not None and _given(fields.get("image_url")):
            raise BadInput(
                "Send exactly one of `image_file` (an upload) or `image_url`; the form has both."
            )
        if upload is not None:
            fields["image"] = await _read_upload(upload, max_upload_bytes)
        return parse_request(fields)
    finally:
        await form.close()


async def _read_upload(upload: UploadFile, max_upload_bytes: int) -> bytes:
    """The file's bytes, read in chunks: a read of the whole limit at once would reserve all
    of it even for a small file (the spooled upload's read allocates what it is asked for)."""
    chunks: list[bytes] = []
    received = 0
    while chunk := await upload.read(READ_CHUNK_BYTES):
        received += len(chunk)
        if received > max_upload_bytes:
            raise TooLarge(
                f"The upload is larger than the limit of {max_upload_bytes:,} "
                "bytes (SEGMENT_MAX_UPLOAD_BYTES)."
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _from_json(raw: bytes, max_upload_bytes: int) -> SegmentRequest:
    try:
        fields = json.loads(raw)  # bytes: UTF-8, -16 or -32, as RFC 8259 allows
    except RecursionError:
        raise BadInput("The JSON body is nested too deeply; send a flat object.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"The body is not valid JSON ({shorten(str(exc), 120)}).") from None
    if not isinstance(fields, dict):
        raise BadInput(
            'The JSON body must be an object, e.g. {"prompt": "cat", "image": "<base64>"}.'
        )
    image = fields.pop("image", None)
    if image is None and not _given(fields.get("image_url")):
        raise BadInput(
            "Send exactly one of `image` (the file, base64) or `image_url`; the body has "
            "neither." + misnamed_in_json(fields)
        )
    if image is not None and _given(fields.get("image_url")):
        raise BadInput(
            "Send exactly one of `image` (the file, base64) or `image_url`; the body has both."
        )
    if image is not None:
        fields["image"] = decode_base64_image(image, max_upload_bytes)
    return parse_request(fields)


def decode_base64_image(value: Any, max_upload_bytes: int) -> bytes:
    """JSON's `image`: base64, or a data: URL of it; the upload limit applies to the file."""
    if not isinstance(value, str):
        raise InvalidRequest("Invalid request: image: must be a base64 string or a data: URL.")
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise BadInput("image: a data: URL must be base64-encoded (data:image/png;base64,...).")
    if len(text) * 3 // 4 > max_upload_bytes + 3:
        raise TooLarge(too_large_detail(max_upload_bytes))
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(
            f"image is not valid base64 ({exc}); send the file's bytes base64-encoded."
        ) from None
    if len(data) > max_upload_bytes:
        raise TooLarge(too_large_detail(max_upload_bytes))
    return data


def _given(value: Any) -> bool:
    """A field counts as sent unless absent or blank (forms send empty fields as "")."""
    return value is not None and not (isinstance(value, str) and not value.strip())
