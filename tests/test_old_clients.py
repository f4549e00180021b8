"""Clients of the service this one replaces keep working: GET / for a welcome, POST /segment/
with a form, Google's model id, and (SEGMENT_COMPAT=seed) the old `image` and `masks` keys with
their old meanings: the model's input image, boxes in its pixels, the decoder's 64x64 masks."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from transformers import AutoTokenizer

from app.api.app import create_app
from app.model.vae import MaskDecoder
from app.runtime.pool import create_worker
from scripts.harness import live_server, tiny_settings, wait_healthy
from scripts.scripted_output import ScriptedOutput
from tests.images import gradient

INPUT_SIZE = 224  # the tiny model's input side (app/model/tiny.py)
# <loc> values that are multiples of 32 land on whole pixels at 224 (32 / 1024 * 224 = 7), so
# the expected boxes need no rounding rule: (y_min, x_min, y_max, x_max) on 0..1023.
# Inside the demo grammar's cells for two classes (left and right half): the tiny model has
# random weights, so its grammar places each object in a part of the picture of its own.
CAT_LOC, DOG_LOC = (128, 64, 640, 448), (512, 576, 992, 960)
CAT_CODES, DOG_CODES = list(range(16)), list(range(100, 116))
CAT_AND_DOG = " ; ".join(
    "".join(f"<loc{v:04d}>" for v in loc) + "".join(f"<seg{c:03d}>" for c in codes) + f" {label}"
    for loc, codes, label in [(CAT_LOC, CAT_CODES, "cat"), (DOG_LOC, DOG_CODES, "dog")]
)
CAT = CAT_AND_DOG.split(" ; ")[0]
OLD_WELCOME = {"message": "Welcome to the PaliGemma Segmentation API!"}


def serve(tiny_model_dir: Path, compat: str, text: str = CAT) -> Iterator[str]:
    script = ScriptedOutput(AutoTokenizer.from_pretrained(str(tiny_model_dir)), text)
    settings = tiny_settings(tiny_model_dir, compat=compat)
    worker = create_worker(settings, logits_processors=script.processors)
    with live_server(create_app(settings, worker)) as url:
        wait_healthy(url)
        yield url


@pytest.fixture(scope="module")
def seed_service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny model where a real one would be, as mlx-community's conversion of a Google
    checkpoint: old clients name the Google id (`google/paligemma2-tiny`)."""
    converted = tmp_path_factory.mktemp("models") / "mlx-community" / "paligemma2-tiny-8bit"
    converted.parent.mkdir()
    converted.symlink_to(tiny_model_dir, target_is_directory=True)
    yield from serve(converted, "seed", CAT_AND_DOG)


@pytest.fixture(scope="module")
def decoded(tiny_model_dir: Path) -> dict[str, np.ndarray]:
    """What the service's mask decoder makes of each object's codes: (64, 64) raw maps. Loaded
    and run on one thread of its own, as MLX wants (its streams are per thread)."""

    def decode_all() -> np.ndarray:
        decoder = MaskDecoder.load(tiny_model_dir / "vae-oid.npz")
        return decoder.decode(np.asarray([CAT_CODES, DOG_CODES], dtype=np.int32))

    with ThreadPoolExecutor(1) as thread:
        cat, dog = thread.submit(decode_all).result()
    return {"cat": cat, "dog": dog}


def decode(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def old_client_post(url: str, image_path: Path, **data: str) -> requests.Response:
    """What the old service's README showed its users doing, with requests."""
    segm_url = os.path.join(url + "/", "segment")
    with open(image_path, "rb") as image_file:
        files = {"image_file": (os.path.basename(image_path), image_file, "image/jpeg")}
        return requests.post(segm_url, files=files, data=data, timeout=60)


def pasted(mask_png: str, coordinates: list[int], size: int) -> np.ndarray:
    """What an old client draws: the 64x64 mask resized into its box on the model's image,
    as soft values 0..1 on a (size, size) canvas."""
    x0, y0, x1, y1 = coordinates
    grey = Image.open(io.BytesIO(base64.b64decode(mask_png)))
    canvas = np.zeros((size, size), dtype=np.float32)
    resized = grey.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
    canvas[y0:y1, x0:x1] = np.asarray(resized, dtype=np.float32) / 255
    return canvas


def expected(raw: np.ndarray, loc: tuple[int, ...], size: int) -> np.ndarray:
    """The decoder's map for an object as soft values (big_vision's x * 0.5 + 0.5), resized
    into the box its <loc> tokens give at the model's input scale."""
    y0, x0, y1, x1 = (v * size // 1024 for v in loc)  # exact: the locs are multiples of 32
    soft = Image.fromarray(np.clip(raw * 0.5 + 0.5, 0, 1).astype(np.float32), mode="F")
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[y0:y1, x0:x1] = np.asarray(soft.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
    return canvas


def test_the_old_welcome_for_scripts_and_the_playground_for_browsers(seed_service: str) -> None:
    answer = requests.get(seed_service + "/", timeout=10)
    assert answer.status_code == 200 and answer.json() == OLD_WELCOME
    page = requests.get(seed_service + "/", headers={"Accept": "text/html,*/*"}, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Welcome to the PaliGemma" not in page.text


def test_an_old_client_pastes_each_mask_into_its_box(
    seed_service: str, decoded: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """An old client resizes each 64x64 `mask` into its `coordinates` on `image` (the model's
    input). What it draws must be the decoder's own map for that object, in the model's
    place for it. The random decoder's maps are speckled, so soft values are compared."""
    image_path = tmp_path / "bl_cat.png"
    gradient(200, 150).save(image_path)  # neither square nor the model's size
    response = old_client_post(seed_service, image_path, prompt="segment cat ; dog")
    assert response.status_code == 200, response.text
    body = response.json()
    assert decode(body["image"]).shape == (INPUT_SIZE, INPUT_SIZE, 3)
    assert [o["label"] for o in body["objects"]] == ["cat", "dog"]  # the new keys are there too
    assert (body["width"], body["height"]) == (200, 150)
    cat, dog = body["masks"]
    for entry, loc in [(cat, CAT_LOC), (dog, DOG_LOC)]:
        x0, y0, x1, y1 = entry["coordinates"]
        assert 0 <= x0 < x1 <= INPUT_SIZE and 0 <= y0 < y1 <= INPUT_SIZE, entry["coordinates"]
        assert [y0, x0, y1, x1] == [v * INPUT_SIZE // 1024 for v in loc]
        grey = decode(entry["mask"])
        assert grey.shape == (64, 64) and grey.dtype == np.uint8
        assert len(np.unique(grey)) > 2  # the soft map, not a thresholded 0/255 one
    drawn = {
        name: pasted(e["mask"], e["coordinates"], INPUT_SIZE)
        for name, e in zip(["cat", "dog"], [cat, dog], strict=True)
    }
    want = {
        "cat": expected(decoded["cat"], CAT_LOC, INPUT_SIZE),
        "dog": expected(decoded["dog"], DOG_LOC, INPUT_SIZE),
    }
    # Mean absolute difference inside the object's box (measured ~0.002: 8-bit rounding) and
    # correlation over the whole canvas (a misplaced box lowers it).
    for name, loc in [("cat", CAT_LOC), ("dog", DOG_LOC)]:
        inside = expected(np.ones((64, 64), np.float32), loc, INPUT_SIZE) > 0
        error = float(np.abs(drawn[name] - want[name])[inside].mean())
        correlation = float(np.corrcoef(drawn[name].ravel(), want[name].ravel())[0, 1])
        assert error < 0.01 and correlation > 0.99, (name, error, correlation)
    # The comparison tells objects apart: the other object's map in this box is far off (~0.1).
    cat_box = expected(np.ones((64, 64), np.float32), CAT_LOC, INPUT_SIZE) > 0
    cat_as_dog = expected(decoded["dog"], CAT_LOC, INPUT_SIZE)
    assert float(np.abs(drawn["cat"] - cat_as_dog)[cat_box].mean()) > 0.05


def test_a_streamed_answer_ends_with_the_same_old_keys(seed_service: str, tmp_path: Path) -> None:
    image_path = tmp_path / "a.png"
    gradient(200, 150).save(image_path)
    plain = old_client_post(seed_service, image_path, prompt="cat ; dog")
    streamed = old_client_post(seed_service, image_path, prompt="cat ; dog", stream="true")
    assert plain.status_code == 200 and streamed.status_code == 200, streamed.text
    done = json.loads(streamed.text.splitlines()[-1])
    assert done["type"] == "done", done
    assert (done["image"], done["masks"]) == (plain.json()["image"], plain.json()["masks"])


def test_trailing_slash_and_google_model_id(seed_service: str) -> None:
    files = {"image_file": ("a.png", io.BytesIO(_png()), "image/png")}
    data = {"prompt": "cat ; dog", "model_id": "google/paligemma2-tiny"}
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
        welcome = requests.get(url + "/", timeout=10)
        assert welcome.status_code == 200 and welcome.json() != OLD_WELCOME
        assert "/segment" in welcome.json()["message"]


def _png() -> bytes:
    buffer = io.BytesIO()
    gradient(64, 48).save(buffer, "PNG")
    return buffer.getvalue()
