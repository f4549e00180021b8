"""POST /segment as application/json (what Swift Codable and fetch clients send first), and
POST /segment/ (what clients of the service this one replaces call)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from app.api.app import create_app
from app.runtime.pool import create_worker
from scripts.harness import local_client, tiny_settings, wait_healthy
from scripts.scripted_output import ScriptedOutput
from tests.images import gradient, image_bytes

PNG = image_bytes(gradient(160, 120))
CAT = "<loc0100><loc0200><loc0600><loc0700>" + "".join(f"<seg{c:03d}>" for c in range(16)) + " cat"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    script = ScriptedOutput(AutoTokenizer.from_pretrained(str(tiny_model_dir)), CAT)
    settings = tiny_settings(tiny_model_dir, max_upload_bytes=200_000)
    with local_client(
        create_app(settings, create_worker(settings, logits_processors=script.processors))
    ) as c:
        wait_healthy(c)
        yield c


def without_timings(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "timings_ms"}


@pytest.mark.parametrize("mask_format", ["png", "rle", "coco_rle"])
@pytest.mark.parametrize("as_data_url", [False, True])
def test_json_gets_the_same_answer_as_the_form(
    client: TestClient, mask_format: str, as_data_url: bool
) -> None:
    encoded = base64.b64encode(PNG).decode()
    image = f"data:image/png;base64,{encoded}" if as_data_url else encoded
    body = {"prompt": "cat", "image": image, "mask_format": mask_format, "overlay": True}
    as_json = client.post("/segment", json=body)
    assert as_json.status_code == 200, as_json.text
    as_form = client.post(
        "/segment",
        data={"prompt": "cat", "mask_format": mask_format, "overlay": "true"},
        files={"image_file": ("a.png", PNG)},
    )
    assert without_timings(as_json.json()) == without_timings(as_form.json())
    assert as_json.json()["objects"][0]["label"] == "cat"


def test_json_streams_too(client: TestClient) -> None:
    body = {"prompt": "cat", "image": base64.b64encode(PNG).decode(), "stream": True}
    with client.stream("POST", "/segment", json=body) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert response.status_code == 200, lines
    assert response.headers["content-type"] == "application/x-ndjson"
    # An error after the first line is a line too: the kinds matter, not only the count.
    assert [line["type"] for line in lines] == ["object", "done"], lines
    assert lines[1]["objects"] == [lines[0]["object"]]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"image": "aGVsbG8="}, 422, "prompt is missing"),
        ({"prompt": "cat"}, 400, "exactly one of"),
        ({"prompt": "cat", "image": "not base64!!"}, 400, "image is not valid base64"),
        ({"prompt": "cat", "image": 12}, 422, "image: must be a base64 string"),
        ({"prompt": "cat", "image": "data:image/png,abc"}, 400, "must be base64"),
        ({"prompt": ["cat"], "image": "aGVsbG8="}, 422, "prompt: must be a string"),
        ({"prompt": "cat", "image": "aGVsbG8=", "mask_format": "jpeg"}, 422, "mask_format"),
        ({"prompt": "cat", "image": "aGVsbG8="}, 415, "not a recognised image"),
    ],
)
def test_bad_json_names_the_field(
    client: TestClient, body: dict[str, Any], status: int, says: str
) -> None:
    response = client.post("/segment", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]


def test_the_limit_applies_to_the_decoded_image(client: TestClient) -> None:
    big = base64.b64encode(b"\0" * 200_001).decode()  # the body is 4/3 of that
    response = client.post("/segment", json={"prompt": "cat", "image": big})
    assert response.status_code == 413 and "200,000" in response.json()["detail"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"not json", "application/json"), (b"[1, 2]", "application/json"), (b"cat", "text/plain")],
)
def test_bodies_that_are_neither_say_what_is_accepted(
    client: TestClient, content: bytes, content_type: str
) -> None:
    response = client.post("/segment", content=content, headers={"Content-Type": content_type})
    detail = response.json()["detail"]
    if content_type == "text/plain":
        assert response.status_code == 415
        assert "multipart/form-data" in detail and "application/json" in detail
    else:
        assert response.status_code == 400 and "JSON" in detail


def test_the_trailing_slash_answers_like_the_plain_path(client: TestClient) -> None:
    form = {"data": {"prompt": "cat"}, "files": {"image_file": ("a.png", PNG)}}
    plain = client.post("/segment", **form)  # type: ignore[arg-type]
    slash = client.post("/segment/", follow_redirects=False, **form)  # type: ignore[arg-type]
    assert slash.status_code == 200
    assert without_timings(slash.json()) == without_timings(plain.json())


def test_openapi_shows_both_bodies(client: TestClient) -> None:
    content = client.get("/openapi.json").json()["paths"]["/segment"]["post"]["requestBody"][
        "content"
    ]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert "image" in content["application/json"]["schema"]["properties"]


def test_every_openapi_example_is_a_request_the_service_answers(client: TestClient) -> None:
    """What Swagger's Try it out sends by itself: the JSON body's example as it stands, and a
    form filled with each field's example (optional ones empty) plus an upload."""
    content = client.get("/openapi.json").json()["paths"]["/segment"]["post"]["requestBody"][
        "content"
    ]
    example = content["application/json"]["example"]
    assert set(example) >= {"prompt", "image"}
    as_json = client.post("/segment", json=example)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["objects"]
    for media_type in ("application/json", "multipart/form-data"):
        properties = content[media_type]["schema"]["properties"]
        filled = {name: p["examples"][0] for name, p in properties.items() if "examples" in p}
        assert filled["prompt"], media_type
        form = {name: str(value) for name, value in filled.items()}
        as_form = client.post("/segment", data=form, files={"image_file": ("a.png", PNG)})
        assert as_form.status_code == 200, (media_type, form, as_form.text)
        assert as_form.json()["objects"]


def test_optional_form_fields_start_empty(client: TestClient) -> None:
    """No placeholder Swagger would fill in and send (`image_url=string`, `max_new_tokens=1`)."""
    form = client.get("/openapi.json").json()["paths"]["/segment"]["post"]["requestBody"][
        "content"
    ]["multipart/form-data"]["schema"]
    for name in ("image_url", "model_id", "max_new_tokens"):
        assert form["properties"][name]["examples"] == [""], name
        assert name not in form["required"]


@pytest.mark.parametrize(
    ("form", "files", "says"),
    [
        (
            {"prompt": "cat"},
            {"file": ("a.png", PNG)},
            "Got a file in `file`; send it as `image_file`",
        ),
        (
            {"prompt": "cat"},
            {"image": ("a.png", PNG)},
            "Got a file in `image`; send it as `image_file`",
        ),
        ({"prompt": "cat"}, {"image_url": ("a.png", PNG)}, "Got a file in `image_url`; send it as"),
        (
            {"prompt": "cat", "image": "aGVsbG8="},
            None,
            "Got text in `image`; a form sends the image as the file upload `image_file`",
        ),
        ({"prompt": "cat", "url": "http://example.com/a.png"}, None, "send the URL as `image_url`"),
        ({"prompt": "cat"}, None, "the form has neither."),
    ],
)
def test_a_form_is_told_the_field_it_sent_and_the_one_expected(
    client: TestClient, form: dict[str, str], files: dict[str, Any] | None, says: str
) -> None:
    response = client.post("/segment", data=form, files=files)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert says in detail
    if files is None or "image_url" not in files:
        assert detail.startswith("Send exactly one of `image_file` (an upload) or `image_url`")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompt": "cat"}, "the body has neither."),
        ({"prompt": "cat", "image_file": "aGVsbG8="}, "in JSON send the file base64 as `image`"),
        ({"prompt": "cat", "file": "aGVsbG8="}, "Got `file`; send the file base64 as `image`"),
        ({"prompt": "cat", "url": "http://example.com/a.png"}, "send the URL as `image_url`"),
        ({"prompt": "cat", "image": "aGVsbG8=", "image_url": "http://x/a.png"}, "has both"),
    ],
)
def test_json_is_told_about_its_own_field_names(
    client: TestClient, body: dict[str, Any], says: str
) -> None:
    """`image` and `image_url`, never the form's `image_file` as the thing to send."""
    response = client.post("/segment", json=body)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert says in detail
    assert detail.startswith("Send exactly one of `image` (the file, base64) or `image_url`")
    assert "send it as `image_file`" not in detail
