"""`POST /segment` with a JSON body: turned into the multipart form it describes, before routing.

    {"prompt": "cat", "image": "<base64 or data:image/...;base64,...>", "mask_format": "rle"}

Converting at the edge means a JSON request meets exactly the validation, limits and response
of the multipart form, with no second code path to drift. Any other body type gets a 415 that
names the accepted ones.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import send_json, too_large_detail

FORM_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})
JSON_TYPE = "application/json"
SEGMENT_PATHS = frozenset({"/segment", "/segment/"})
TEXT_FIELDS = (
    "prompt",
    "image_url",
    "model_id",
    "mask_format",
    "overlay",
    "max_new_tokens",
    "stream",
)


class BadJson(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class JsonBody:
    """ASGI middleware; runs after the body-size limit, so the body it reads is bounded."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in SEGMENT_PATHS
        ):
            await self.app(scope, receive, send)
            return
        media_type = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
        if media_type in FORM_TYPES:
            await self.app(scope, receive, send)
            return
        if media_type != JSON_TYPE:
            shown = media_type or "no Content-Type"
            await send_json(
                send,
                415,
                f"POST /segment takes multipart/form-data (an upload) or application/json "
                f"(base64 'image'), not {shown}.",
                {},
            )
            return
        try:
            body, content_type = to_multipart(await read_body(receive), self.max_upload_bytes)
        except BadJson as exc:
            await send_json(send, exc.status, exc.detail, {})
            return
        headers = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")
        ]
        headers += [
            (b"content-type", content_type.encode()),
            (b"content-length", b"%d" % len(body)),
        ]
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: disconnects and the like
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadJson(400, "The client went away while sending the body.")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def to_multipart(raw: bytes, max_upload_bytes: int) -> tuple[bytes, str]:
    """The JSON object's fields as a multipart body, and its Content-Type."""
    try:
        fields = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJson(400, f"The body is not valid JSON ({exc}).") from exc
    if not isinstance(fields, dict):
        raise BadJson(
            400, 'The JSON body must be an object, e.g. {"prompt": "cat", "image": "..."}.'
        )
    parts: list[tuple[str, bytes, bool]] = []  # (name, value, is the image)
    for name in TEXT_FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float, str)):
            text = str(value)
        else:
            raise BadJson(422, f"Invalid request: {name}: must be a string, number or boolean.")
        parts.append((name, text.encode("utf-8"), False))
    image = fields.get("image")
    if image is not None:
        parts.append(("image_file", decode_image_field(image, max_upload_bytes), True))
    boundary = secrets.token_hex(16)
    body = bytearray()
    for name, value, is_file in parts:
        disposition = f'form-data; name="{name}"' + ('; filename="image"' if is_file else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if is_file:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def decode_image_field(value: Any, max_upload_bytes: int) -> bytes:
    """`image`: base64, or a data: URL of it; the upload limit applies to the decoded bytes."""
    if not isinstance(value, str):
        raise BadJson(422, "Invalid request: image: must be a base64 string or a data: URL.")
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise BadJson(
                400, "image: a data: URL must be base64-encoded (data:image/png;base64,...)."
            )
    if len(text) * 3 // 4 > max_upload_bytes + 3:
        raise BadJson(413, too_large_detail(max_upload_bytes))
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadJson(
            400, f"image is not valid base64 ({exc}); send the file's bytes base64-encoded."
        ) from exc
    if len(data) > max_upload_bytes:
        raise BadJson(413, too_large_detail(max_upload_bytes))
    return data
