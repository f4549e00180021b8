"""How a request moves: facts from the checkpoint it asks for, pictures from the full image, one
typed request from either body, and every hostile body a 4xx."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.app import create_app
from app.config import Settings
from app.model.messages import DecodedObject
from app.model.tiny import build_tiny_model
from scripts.harness import live_server, local_client, wait_healthy
from tests.fake_model import FakeService, Reply, fake_service
from tests.images import gradient, image_bytes

PNG = image_bytes(gradient(320, 240))


def fake(**overrides: Any) -> FakeService:
    sizes = overrides.pop("input_sizes", None)
    settings = Settings(model="fake/model", warmup=False, **overrides)  # type: ignore[call-arg]
    return fake_service(settings, sizes)


# -- per-model facts ----------------------------------------------------------------------------
def test_the_model_gets_the_image_at_its_own_input_size() -> None:
    service = fake(input_sizes={"fake/model": 224, "fake/model-448": 448})
    with local_client(service.app()) as client:
        wait_healthy(client)
        for model_id, size in (("fake/model-448", 448), (None, 224), ("fake/model-448", 448)):
            form = {"prompt": "cat", **({"model_id": model_id} if model_id else {})}
            response = client.post("/segment", data=form, files={"image_file": ("a.png", PNG)})
            assert response.status_code == 200, response.text
            assert service.model.requests[-1].image.size == (size, size)
            assert service.model.requests[-1].model_id == (model_id or "fake/model")


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sizes")
    build_tiny_model(root / "local" / "tiny-224", seed=0)
    build_tiny_model(root / "local" / "tiny-448", seed=1, image_size=448)
    return root


def answers(models_dir: Path, default: str, ask: str, photo: bytes) -> dict[str, Any]:
    settings = Settings(  # type: ignore[call-arg]
        model=default,
        models_dir=models_dir,
        vae_path=models_dir / "local" / "tiny-224" / "vae-oid.npz",
        warmup=False,
    )
    with local_client(create_app(settings)) as client:
        wait_healthy(client)
        response = client.post(
            "/segment",
            data={"prompt": "cat ; dog", "model_id": ask, "mask_format": "rle"},
            files={"image_file": ("photo.jpg", photo)},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == ask
    return {k: v for k, v in body.items() if k != "timings_ms"}


def test_a_second_model_answers_as_it_does_when_it_is_the_default(two_sizes: Path) -> None:
    """The 448 px model asked for by model_id while the 224 px one is resident sees the same
    image as when it is the default: the same tokens, boxes and masks."""
    rng = np.random.default_rng(3)
    photo = image_bytes(
        Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)), "JPEG"
    )
    as_default = answers(two_sizes, "local/tiny-448", "local/tiny-448", photo)
    beside = answers(two_sizes, "local/tiny-224", "local/tiny-448", photo)
    assert beside == as_default
    assert answers(two_sizes, "local/tiny-448", "local/tiny-224", photo) == answers(
        two_sizes, "local/tiny-224", "local/tiny-224", photo
    )


# -- pictures at full resolution ------------------------------------------------------------------
def test_a_12_megapixel_overlay_is_as_sharp_as_the_photo() -> None:
    """The model's copy may come from a fast reduced-scale JPEG decode; the overlay may not."""
    rng = np.random.default_rng(0)
    height, width = 3000, 4000
    photo = np.clip(128 + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    jpeg = image_bytes(Image.fromarray(photo), "JPEG", quality=92)
    full = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)
    service = fake()
    cat = DecodedObject("cat", (100, 100, 400, 400), 0.9, np.ones((64, 64), np.float32))
    service.model.enqueue(Reply(objects=[cat]))
    with local_client(service.app()) as client:
        wait_healthy(client)
        response = client.post(
            "/segment",
            data={"prompt": "cat", "overlay": "true", "mask_format": "none"},
            files={"image_file": ("photo.jpg", jpeg)},
        )
    assert response.status_code == 200, response.text
    assert service.model.requests[-1].image.size == (224, 224)
    overlay = Image.open(io.BytesIO(base64.b64decode(response.json()["overlay"])))
    drawn = np.asarray(overlay.convert("RGB"), dtype=np.int16)
    _, _, x1, y1 = response.json()["objects"][0]["box"]
    away = np.ones((height, width), bool)
    away[: y1 + 60, : x1 + 60] = False  # the object, its outline and its tag
    assert np.abs(drawn - full)[away].mean() < 0.5  # the photo's own pixels, not a blur of them


# -- one typed request from either body -----------------------------------------------------------
def test_form_and_json_build_the_same_request() -> None:
    service = fake()
    fields = {"prompt": "cat", "mask_format": "rle", "max_new_tokens": "40", "overlay": "true"}
    with local_client(service.app()) as client:
        wait_healthy(client)
        form = client.post("/segment", data=fields, files={"image_file": ("a.png", PNG)})
        body = {**fields, "max_new_tokens": 40, "overlay": True}
        as_json = client.post("/segment", json={**body, "image": base64.b64encode(PNG).decode()})
    assert form.status_code == as_json.status_code == 200
    first, second = service.model.requests
    assert first.max_new_tokens == second.max_new_tokens == 40
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))


# -- hostile bodies -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with local_client(fake(max_upload_bytes=100_000).app()) as c:
        wait_healthy(c)
        yield c


IMAGE = base64.b64encode(PNG[:100]).decode()
HOSTILE_JSON = [
    ("nested", b'{"prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, "nested"),
    ("deep object", b'{"a": ' * 10_000 + b"1" + b"}" * 10_000, 400, "nested"),
    ("utf-16", json.dumps({"prompt": 1, "image": "eA=="}).encode("utf-16"), 422, "prompt: must"),
    ("latin-1", b'{"prompt": "caf\xe9", "image": "' + IMAGE.encode() + b'"}', 400, "JSON"),
    ("huge int", b'{"prompt": "cat", "max_new_tokens": ' + b"9" * 5000 + b"}", 400, "JSON"),
    ("huge float", b'{"prompt": "cat", "image": "eA==", "max_new_tokens": 1e999}', 422, "max_new"),
    ("float tokens", b'{"prompt": "cat", "image": "eA==", "max_new_tokens": 2.5}', 422, "whole"),
    ("bool tokens", b'{"prompt": "cat", "image": "eA==", "max_new_tokens": true}', 422, "whole"),
    ("object prompt", b'{"prompt": {"a": 1}, "image": "eA=="}', 422, "prompt: must be a string"),
    ("null prompt", b'{"prompt": null, "image": "eA=="}', 422, "prompt"),
    ("list image", b'{"prompt": "cat", "image": ["eA=="]}', 422, "image: must be a base64"),
    ("both images", b'{"prompt": "cat", "image": "eA==", "image_url": "http://x/y"}', 400, "one"),
    ("bad overlay", b'{"prompt": "cat", "image": "eA==", "overlay": "maybe"}', 422, "overlay"),
    ("nan", b'{"prompt": "cat", "image": "eA==", "max_new_tokens": NaN}', 422, "max_new_tokens"),
    ("string", b'"cat"', 400, "must be an object"),
    ("empty", b"", 400, "not valid JSON"),
    ("nul bytes", b"\x00" * 1000, 400, "not valid JSON"),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "says"), HOSTILE_JSON, ids=[c[0] for c in HOSTILE_JSON]
)
def test_any_json_body_gets_a_4xx_that_names_the_problem(
    client: TestClient, name: str, body: bytes, status: int, says: str
) -> None:
    response = client.post("/segment", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert says in response.json()["detail"], response.json()
    assert client.get("/health").status_code == 200


def test_an_over_long_model_id_is_not_echoed_whole(client: TestClient) -> None:
    model_id = "someone/" + "x" * 100_000
    for response in (
        client.post(
            "/segment",
            data={"prompt": "cat", "model_id": model_id},
            files={"image_file": ("a.png", PNG)},
        ),
        client.post("/segment", json={"prompt": "cat", "model_id": model_id, "image": IMAGE}),
    ):
        assert response.status_code == 422, response.text
        assert len(response.text) < 500 and "model_id" in response.json()["detail"]


def test_a_chunked_body_over_the_limit_is_a_413_for_json_and_forms() -> None:
    """No Content-Length to refuse up front: the limit trips while the body streams in."""
    service = fake(max_upload_bytes=100_000)

    def chunks(start: bytes, total: int) -> Iterator[bytes]:
        yield start
        for _ in range(total // 10_000):
            yield b"A" * 10_000

    starts = {
        "application/json": b'{"prompt": "cat", "image": "',
        "multipart/form-data; boundary=x": b"--x\r\nContent-Disposition: form-data; "
        b'name="image_file"; filename="a.png"\r\n\r\n',
    }
    with live_server(service.app()) as url:
        for content_type, start in starts.items():
            response = httpx.post(
                f"{url}/segment",
                content=chunks(start, 400_000),
                headers={"Content-Type": content_type},
                timeout=10,
            )
            assert response.status_code == 413, response.text
            assert "100,000" in response.json()["detail"]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
