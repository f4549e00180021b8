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
