"""Clients of the service this one replaces keep working: GET / for a welcome, POST /segment/
with a form, Google's model id, and (SEGMENT_COMPAT=seed) the old `image` and `masks` keys."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from transformers import AutoTokenizer

from app.api.app import create_app
from app.runtime.pool import create_worker
from scripts.harness import live_server, tiny_settings, wait_healthy
from scripts.scripted_output import ScriptedOutput
from tests.images import gradient

CAT = "<loc0100><loc0200><loc0600><loc0700>" + "".join(f"<seg{c:03d}>" for c in range(16)) + " cat"


def serve(tiny_model_dir: Path, compat: str) -> Iterator[str]:
    script = ScriptedOutput(AutoTokenizer.from_pretrained(str(tiny_model_dir)), CAT)
    settings = tiny_settings(tiny_model_dir, compat=compat)
    worker = create_worker(settings, logits_processors=script.processors)
    with live_server(create_app(settings, worker)) as url:
        wait_healthy(url)
        yield url


@pytest.fixture(scope="module")
def seed_service(tiny_model_dir: Path) -> Iterator[str]:
    yield from serve(tiny_model_dir, "seed")


def decode(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def test_an_old_client_works_unchanged(seed_service: str, tmp_path: Path) -> None:
    """What the old service's README showed its users doing, with requests."""
    assert "Welcome" in requests.get(seed_service + "/", timeout=10).json()["message"]
    image_path = tmp_path / "bl_cat.png"
    gradient(200, 150).save(image_path)
    segm_url = os.path.join(seed_service + "/", "segment")
    with open(image_path, "rb") as image_file:
        data = {"prompt": "segment cat"}
        files = {"image_file": (os.path.basename(image_path), image_file, "image/jpeg")}
        response = requests.post(segm_url, files=files, data=data, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert decode(body["image"]).shape[:2] == (150, 200)
    [first] = body["masks"]
    mask = decode(first["mask"]) > 0
    assert mask.shape == (150, 200) and mask.any()
    assert first["coordinates"] == body["objects"][0]["box"]  # the new keys are there too
    x0, y0, x1, y1 = first["coordinates"]
    assert not mask[:, :x0].any() and not mask[:, x1:].any()
    assert not mask[:y0].any() and not mask[y1:].any()


def test_trailing_slash_and_google_model_id(seed_service: str) -> None:
    files = {"image_file": ("a.png", io.BytesIO(_png()), "image/png")}
    data = {"prompt": "cat", "model_id": "google/paligemma2-tiny"}
    response = requests.post(seed_service + "/segment/", data=data, files=files, timeout=60)
    assert response.status_code == 200 and not response.history  # answered, not redirected
    wrong = requests.post(
        seed_service + "/segment",
        data={"prompt": "cat", "model_id": "google/paligemma2-10b-mix-448"},
        files={"image_file": ("a.png", io.BytesIO(_png()), "image/png")},
        timeout=60,
    )
    assert wrong.status_code == 400 and "is not installed here" in wrong.text


def test_without_compat_the_answer_stays_lean(tiny_model_dir: Path) -> None:
    for url in serve(tiny_model_dir, "none"):
        files = {"image_file": ("a.png", io.BytesIO(_png()), "image/png")}
        response = requests.post(url + "/segment", data={"prompt": "cat"}, files=files, timeout=60)
        assert response.status_code == 200, response.text  # an error body lacks the keys too
        body = response.json()
        assert body["objects"] and "image" not in body and "masks" not in body


def _png() -> bytes:
    buffer = io.BytesIO()
    gradient(64, 48).save(buffer, "PNG")
    return buffer.getvalue()
