"""End to end over HTTP: TestClient runs the lifespan, the tiny random model runs for real.

The model is forced (scripts/scripted_output.py) to say a known sequence, so generation,
parsing, mask decoding, placement and encoding all run on output whose right answer we know.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from transformers import AutoTokenizer

from app.api.app import create_app
from app.config import Settings
from app.model.messages import ModelEvent, ModelRequest
from app.model.paligemma import PaliGemma
from app.runtime.backend import BackendInfo
from app.runtime.catalog import Checkpoint
from app.runtime.pool import RunnerPool, create_worker
from app.runtime.worker import Worker
from app.steps.tokens import box_to_pixels
from scripts.harness import local_client, tiny_settings, wait_healthy
from scripts.scripted_output import ScriptedOutput
from tests.images import exif_rotated_jpeg, gradient, image_bytes


def locs(*values: int) -> str:
    return "".join(f"<loc{v:04d}>" for v in values)


def segs(*codes: int) -> str:
    return "".join(f"<seg{c:03d}>" for c in codes)


CAT_LOC, DOG_LOC = (100, 200, 600, 700), (500, 50, 1000, 400)
CAT = locs(*CAT_LOC) + segs(*range(100, 116)) + " cat"
DOG = locs(*DOG_LOC) + segs(*range(16)) + " dog"
TWO_OBJECTS = f"{CAT} ; {DOG}"


class Service:
    """A running tiny-model service whose next output the test chooses."""

    def __init__(self, client: TestClient, script: ScriptedOutput, loads: list[Path]) -> None:
        self.client, self.script, self.loads = client, script, loads

    def segment(self, text: str, data: bytes, filename: str = "image.png", **form: str):  # type: ignore[no-untyped-def]
        self.script.text = text
        return self.client.post(
            "/segment", data={"prompt": "cat ; dog", **form}, files={"image_file": (filename, data)}
        )


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path) -> Iterator[Service]:
    loads: list[Path] = []
    original = PaliGemma.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: type[PaliGemma], path: Path, **options: Any) -> PaliGemma:
        loads.append(path)
        return original(cls, path, **options)  # type: ignore[no-any-return]

    script = ScriptedOutput(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaliGemma, "load", classmethod(counting_load))
        # Unconstrained: these tests force output, malformed on purpose in places; the output
        # grammar is tested end to end below (the demo) and in tests/test_constrained.py.
        settings = tiny_settings(tiny_model_dir, url_allowlist=["127.0.0.1"], constrained=False)
        worker = create_worker(settings, logits_processors=script.processors)
        with local_client(create_app(settings, worker)) as client:
            wait_healthy(client)
            yield Service(client, script, loads)


def decode_png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))) > 0


def test_segment_two_objects_end_to_end(service: Service) -> None:
    response = service.segment(TWO_OBJECTS, image_bytes(gradient(640, 480)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prompt"] == "segment cat ; dog"
    assert (body["width"], body["height"]) == (640, 480)
    assert body["text"] == TWO_OBJECTS
    assert [o["label"] for o in body["objects"]] == ["cat", "dog"]
    for obj, loc in zip(body["objects"], (CAT_LOC, DOG_LOC), strict=True):
        assert tuple(obj["box"]) == box_to_pixels(loc, 640, 480)
        mask = decode_png(obj["mask"])
        assert mask.shape == (480, 640)
        x0, y0, x1, y1 = obj["box"]
        outside = mask.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any() and mask.any()  # something inside the box, nothing outside
        assert obj["score"] == pytest.approx(1.0, abs=1e-3)  # forced tokens win with p ~ 1
    timings = body["timings_ms"]
    assert {
        "decode_image",
        "queue_wait",
        "preprocess",
        "vision",
        "generate",
        "decode_masks",
        "masks",
        "total",
    } <= set(timings)
    assert response.headers["x-request-id"]


def test_masks_differ_with_their_codes(service: Service) -> None:
    same_box = locs(*CAT_LOC)
    text = f"{same_box}{segs(*range(16))} cat ; {same_box}{segs(*range(112, 128))} dog"
    response = service.segment(text, image_bytes(gradient(320, 240)))
    assert response.status_code == 200, response.text
    a, b = response.json()["objects"]
    assert a["box"] == b["box"] and a["mask"] != b["mask"]


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("jpeg", image_bytes(gradient(320, 200), "JPEG"), (320, 200)),
        ("rgba", image_bytes(gradient(300, 100, "RGBA")), (300, 100)),
        ("grey", image_bytes(gradient(120, 90, "L")), (120, 90)),
        ("exif-rotated", exif_rotated_jpeg(320, 200, orientation=6), (200, 320)),
    ],
)
def test_upload_kinds(service: Service, name: str, data: bytes, size: tuple[int, int]) -> None:
    response = service.segment(CAT, data, filename=f"{name}.img")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == size
    [cat] = body["objects"]
    assert tuple(cat["box"]) == box_to_pixels(CAT_LOC, *size)  # boxes in the upright image
    assert decode_png(cat["mask"]).shape == (size[1], size[0])


def test_detect_prompt_gives_boxes_without_masks(service: Service) -> None:
    service.script.text = f"{locs(*CAT_LOC)} car ; {locs(*DOG_LOC)} car"
    response = service.client.post(
        "/segment",
        data={"prompt": "detect car"},
        files={"image_file": ("a.png", image_bytes(gradient(100, 100)))},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prompt"] == "detect car"
    assert [(o["label"], o["mask"]) for o in body["objects"]] == [("car", None), ("car", None)]


def test_a_token_cap_too_small_for_one_object_is_a_clear_422(service: Service) -> None:
    response = service.segment(CAT, image_bytes(gradient(64, 64)), max_new_tokens="1")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "max_new_tokens=1 cannot hold one object" in detail and "at least 21" in detail


@pytest.mark.parametrize("fmt", ["rle", "polygon", "none"])
def test_mask_formats(service: Service, fmt: str) -> None:
    response = service.segment(CAT, image_bytes(gradient(200, 150)), mask_format=fmt)
    assert response.status_code == 200, response.text  # an error body has no mask either
    mask = response.json()["objects"][0]["mask"]
    if fmt == "rle":
        assert mask["size"] == [150, 200] and sum(mask["counts"]) == 150 * 200
    elif fmt == "polygon":
        assert isinstance(mask, list) and all(len(p) >= 6 for p in mask)
    else:
        assert mask is None


class _ImageServer(BaseHTTPRequestHandler):
    png = image_bytes(gradient(160, 120))

    def do_GET(self) -> None:
        if self.path == "/cat.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.png)))
            self.end_headers()
            self.wfile.write(self.png)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("path", ["/cat.png", "/moved"])
def test_image_url(service: Service, image_server: str, path: str) -> None:
    service.script.text = CAT
    response = service.client.post(
        "/segment", data={"prompt": "cat", "image_url": image_server + path}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (160, 120)
    assert [o["label"] for o in body["objects"]] == ["cat"]


def test_image_url_errors_are_clear(service: Service, image_server: str) -> None:
    missing = service.client.post(
        "/segment", data={"prompt": "cat", "image_url": image_server + "/nope.png"}
    )
    assert missing.status_code == 400 and "HTTP 404" in missing.json()["detail"]
    scheme = service.client.post(
        "/segment", data={"prompt": "cat", "image_url": "file:///etc/passwd"}
    )
    assert scheme.status_code == 400 and "http" in scheme.json()["detail"]


def test_unforced_generation_runs_the_real_model(service: Service) -> None:
    """No script: the random model says whatever it says; the service must still answer."""
    response = service.segment("", image_bytes(gradient(64, 64)), max_new_tokens="24")
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["text"], str)


@pytest.fixture(scope="module")
def demo(tiny_model_dir: Path) -> Iterator[TestClient]:
    """`make demo`: the random model with the default settings (constrained decoding on)."""
    with local_client(create_app(tiny_settings(tiny_model_dir))) as client:
        wait_healthy(client)
        yield client


@pytest.mark.parametrize(
    ("prompt", "classes", "size"),
    [("cat", ["cat"], (64, 64)), ("left wheel ; dog", ["left wheel", "dog"], (640, 480))],
)
def test_the_demo_shows_a_well_formed_object_per_class(
    demo: TestClient, prompt: str, classes: list[str], size: tuple[int, int]
) -> None:
    response = demo.post(
        "/segment",
        data={"prompt": prompt, "overlay": "true"},
        files={"image_file": ("a.png", image_bytes(gradient(*size)))},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["objects"]) == len(classes)
    for obj in body["objects"]:
        assert obj["label"] in classes
        x0, y0, x1, y1 = obj["box"]
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
        mask = decode_png(obj["mask"])
        assert mask.shape == (size[1], size[0]) and obj["area"] == int(mask.sum())
        assert obj["score"] < 0.05  # forced by the grammar: the random model never chose it
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"])))
    assert overlay.size == size and overlay.mode == "RGB"
    assert "overlay" in body["timings_ms"]


def test_overlay_is_only_there_when_asked(demo: TestClient) -> None:
    response = demo.post(
        "/segment", data={"prompt": "cat"}, files={"image_file": ("a.png", image_bytes(gradient()))}
    )
    assert response.status_code == 200, response.text  # an error body lacks the key too
    assert response.json()["objects"] and "overlay" not in response.json()


@pytest.mark.parametrize(
    ("form", "files", "status", "says"),
    [
        ({}, {"image_file": ("a.png", b"x")}, 422, "prompt"),
        ({"prompt": "   "}, {"image_file": ("a.png", b"x")}, 400, "prompt is empty"),
        ({"prompt": "cat"}, None, 400, "exactly one of"),
        (
            {"prompt": "cat", "image_url": "http://127.0.0.1:9/x.png"},
            {"image_file": ("a.png", b"x")},
            400,
            "exactly one of",
        ),
        ({"prompt": "cat"}, {"image_file": ("a.png", b"")}, 400, "empty"),
        ({"prompt": "cat"}, {"image_file": ("a.txt", b"just text")}, 415, "not a recognised image"),
        (
            {"prompt": "cat", "model_id": "someone/else"},
            {"image_file": ("a.png", b"x")},
            400,
            "model_id",
        ),
        (
            {"prompt": "cat", "mask_format": "jpeg"},
            {"image_file": ("a.png", b"x")},
            422,
            "mask_format",
        ),
    ],
)
def test_bad_requests_get_clear_json_errors(
    service: Service,
    form: dict[str, str],
    files: dict[str, tuple[str, bytes]] | None,
    status: int,
    says: str,
) -> None:
    response = service.client.post("/segment", data=form, files=files)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and says in detail
    assert service.client.get("/health").status_code == 200  # and the service keeps running


def test_model_id_naming_the_loaded_model_is_accepted(service: Service) -> None:
    model = service.client.get("/health").json()["model"]
    response = service.segment(CAT, image_bytes(gradient(50, 50)), model_id=model)
    assert response.status_code == 200


def test_model_is_loaded_once_across_many_requests(service: Service) -> None:
    before = service.client.get("/health").json()
    loads = len(service.loads)
    for _ in range(5):
        assert service.segment(CAT, image_bytes(gradient(80, 60))).status_code == 200
    after = service.client.get("/health").json()
    assert len(service.loads) == loads
    assert after["loaded_at"] == before["loaded_at"]
    assert after["requests_served"] == before["requests_served"] + 5
    assert after["device"] in ("cpu", "gpu")
    assert after["random_weights"] is True  # the tiny model says so, so users are not misled


class _Gated:
    """A backend whose load waits for the test to open the gate, so 'loading' is seen."""

    def __init__(self, inner: RunnerPool) -> None:
        self.inner, self.name, self.gate = inner, inner.name, threading.Event()

    def prepare(self) -> BackendInfo:
        return self.inner.prepare()

    def load(self) -> BackendInfo:
        self.gate.wait(30)
        return self.inner.load()

    def run(self, request: ModelRequest, cancelled: Callable[[], bool]) -> Iterator[ModelEvent]:
        return self.inner.run(request, cancelled)

    def unload(self) -> None:
        self.inner.unload()

    def loaded_models(self) -> list[str]:
        return self.inner.loaded_models()

    def checkpoint(self, model_id: str | None) -> Checkpoint:
        return self.inner.checkpoint(model_id)


def test_health_is_503_while_loading_then_200(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir, warmup=False)
    gated = _Gated(RunnerPool(settings))
    worker = Worker(gated, max_queue=1, request_timeout_s=30)
    with local_client(create_app(settings, worker)) as client:
        loading = client.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert loading.headers["retry-after"]
        busy = client.post(
            "/segment",
            data={"prompt": "cat"},
            files={"image_file": ("a.png", image_bytes(gradient(8, 8)))},
        )
        assert busy.status_code == 503 and "loading" in busy.json()["detail"]
        gated.gate.set()
        body = wait_healthy(client)
        assert body["status"] == "ok" and body["loaded_at"] and body["reason"] is None


def test_missing_model_starts_anyway_and_says_how_to_fix_it(tmp_path: Path) -> None:
    settings = Settings(
        model="someone/absent-model",
        models_dir=tmp_path,  # type: ignore[call-arg]
        vae_path=tmp_path / "vae-oid.npz",
    )
    with local_client(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while (body := client.get("/health").json())["status"] == "loading":
            assert time.monotonic() < deadline, f"still loading after 30 s: {body}"
            time.sleep(0.05)
        health = client.get("/health")
        assert health.status_code == 503 and body["status"] == "error"
        assert "make models" in body["reason"] and "SEGMENT_MODEL=demo" in body["reason"]
        response = client.post(
            "/segment",
            data={"prompt": "cat"},
            files={"image_file": ("a.png", image_bytes(gradient(8, 8)))},
        )
        assert response.status_code == 503 and "make models" in response.json()["detail"]
