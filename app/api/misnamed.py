"""What a body without an image sent instead: the field it used, named back with the one it
should have used (`file=` for `image_file`, `image_file` in JSON for `image`).

A caller who sent the image under another name reads "Send exactly one of ..." as "you sent no
image" and looks for the bug elsewhere; naming the field they did send points at it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starlette.datastructures import UploadFile

from app.errors import shorten

# Names callers give the image or its URL by mistake (other services' names, the other body
# type's name). Any file in a form is an image sent under the wrong name, whatever its name.
IMAGE_NAMES = ("image", "image_file", "file", "img", "photo", "picture", "upload", "data")
URL_NAMES = ("url", "imageUrl", "image_uri", "uri", "link")


def misnamed_in_form(items: Iterable[tuple[str, str | UploadFile]]) -> str:
    """A sentence naming the field a form used for the image, or "" if it used none."""
    items = list(items)
    for name, value in items:
        if isinstance(value, UploadFile):  # image_file itself is never missing here
            return f" Got a file in `{shorten(name)}`; send it as `image_file`."
    for name, _ in items:
        if name in IMAGE_NAMES:
            return (
                f" Got text in `{name}`; a form sends the image as the file upload `image_file` "
                "(a base64 `image` is for a JSON body)."
            )
        if name in URL_NAMES:
            return f" Got `{name}`; send the URL as `image_url`."
    return ""


def misnamed_in_json(fields: Mapping[str, Any]) -> str:
    """A sentence naming the key a JSON body used for the image, or "" if it used none."""
    for name in fields:
        if name == "image_file":
            return (
                " Got `image_file` (the form's name for the upload); in JSON send the file "
                "base64 as `image`."
            )
        if name in IMAGE_NAMES:
            return f" Got `{name}`; send the file base64 as `image`."
        if name in URL_NAMES:
            return f" Got `{name}`; send the URL as `image_url`."
    return ""
