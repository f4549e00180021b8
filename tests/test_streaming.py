"""`stream=true`: NDJSON lines, objects as they are found, one `done` equal to the plain answer."""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from app.steps.objects import DecodedObject
from scripts.harness import health_until, live_server, local_client, tiny_settings, wait_healthy
from tests.fake_model import Hold, fake_service
from tests.images import gradient, image_bytes

PNG = image_bytes(gradient(320, 240))


def stream(client: TestClient, **form: str) -> tuple[httpx.Response, list[dict[str, Any]]]:
    files = {"image_file": ("a.png", PNG)}
    data = {"prompt": "cat ; dog ; car", "stream": "true", **form}
    with client.stream("POST", "/segment", data=data, files=files) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    return response, lines


@pytest.fixture(scope="module")
def demo(tiny_model_dir: Path) -> Iterator[TestClient]:
    with local_client(create_app(tiny_settings(tiny_model_dir))) as client:
        wait_healthy(client)
        yield client


@pytest.mark.parametrize("mask_format", ["png", "rle", "coco_rle", "polygon", "none"])
def test_objects_then_one_done_equal_to_the_plain_answer(
    demo: TestClient, mask_format: str
) -> None:
    response, lines = stream(demo, mask_format=mask_format, overlay="true")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["x-request-id"]
    *objects, done = lines
    assert [line["type"] for line in objects] == ["object"] * 3 and done["type"] == "done"
    assert [line["object"] for line in objects] == done["objects"]
    plain = demo.post(
        "/segment",
        data={"prompt": "cat ; dog ; car", "mask_format": mask_format, "overlay": "true"},
        files={"image_file": ("a.png", PNG)},
    ).json()
    del done["type"], done["timings_ms"], plain["timings_ms"]
    assert done == plain


def test_bad_input_and_a_full_queue_keep_their_status_codes() -> None:
    fake = fake_service(Settings(model="fake/model", warmup=False, max_queue=1, max_batch=1))  # type: ignore[call-arg]
    holds = [Hold(), Hold()]
    fake.model.enqueue(*holds)
    with local_client(fake.app()) as client, ThreadPoolExecutor(2) as pool:
        wait_healthy(client)
        response, [body] = stream(client, prompt="   ")
        assert response.status_code == 400 and "prompt is empty" in body["detail"]
        try:  # released whatever happens: a failed check must not leave the pool waiting
            held = [pool.submit(stream, client)]
            assert holds[0].started.wait(10)
            held.append(pool.submit(stream, client))
            health_until(client, lambda h: h["waiting"] >= 1, "the second request never queued")
            full, [body] = stream(client)
            assert full.status_code == 503 and full.headers["retry-after"]
            assert "already waiting" in body["detail"]
        finally:
            for hold in holds:
                hold.release.set()
        for future in held:  # the two admitted ones were answered in full
            answered, lines = future.result(timeout=10)
            assert answered.status_code == 200 and lines[-1]["type"] == "done", lines


def test_an_error_after_the_first_line_is_one_error_line() -> None:
    fake = fake_service(Settings(model="fake/model", warmup=False, request_timeout_s=0.5))  # type: ignore[call-arg]
    fake.model.enqueue(Hold())
    with local_client(fake.app()) as client:
        wait_healthy(client)
        response, lines = stream(client)
    assert response.status_code == 200
    [error] = lines
    assert error["type"] == "error" and error["status"] == 504
    assert "SEGMENT_REQUEST_TIMEOUT_S" in error["detail"]


def test_a_crash_mid_stream_names_the_request_id_only() -> None:
    fake = fake_service(Settings(model="fake/model", warmup=False))  # type: ignore[call-arg]
    fake.model.enqueue(RuntimeError("decoder exploded"))
    with local_client(fake.app()) as client:
        wait_healthy(client)
        response, lines = stream(client)
    [error] = lines
    assert error == {
        "type": "error",
        "status": 500,
        "detail": f"Internal error (request id {response.headers['x-request-id']}); "
        "the log has the details.",
    }


def test_an_object_is_sent_while_the_model_is_still_generating() -> None:
    fake = fake_service(Settings(model="fake/model", warmup=False))  # type: ignore[call-arg]
    cat = DecodedObject("cat", (100, 100, 600, 600), 0.9, np.ones((64, 64), np.float32))
    hold = Hold(found=[cat])
    fake.model.enqueue(hold)
    with live_server(fake.app()) as url:
        data = {"prompt": "cat", "stream": "true", "mask_format": "none"}
        files = {"image_file": ("a.png", PNG)}
        with httpx.stream("POST", f"{url}/segment", data=data, files=files, timeout=10) as r:
            lines = r.iter_lines()
            first = json.loads(next(lines))
            assert not hold.release.is_set()  # the model has not finished
            assert first == {
                "type": "object",
                "object": {
                    "label": "cat",
                    "box": [31, 23, 188, 141],
                    "mask": None,
                    "score": 0.9,
                    "area": 18526,
                },
            }
            hold.release.set()
            done = json.loads(next(lines))
    assert done["type"] == "done" and done["objects"] == [first["object"]]


def wait_idle(url: str, timeout_s: float = 10) -> None:
    """The job leaves the worker thread right after it sees the cancel: wait for that."""
    deadline = time.monotonic() + timeout_s
    while (health := httpx.get(f"{url}/health", timeout=5).json())["running"]:
        assert time.monotonic() < deadline, f"the worker never went idle: {health}"
        time.sleep(0.02)


def test_a_client_that_leaves_stops_the_generation() -> None:
    fake = fake_service(Settings(model="fake/model", warmup=False))  # type: ignore[call-arg]
    hold = Hold()
    fake.model.enqueue(hold)
    with live_server(fake.app()) as url:
        data = {"prompt": "cat", "stream": "true"}
        with httpx.stream(
            "POST", f"{url}/segment", data=data, files={"image_file": ("a.png", PNG)}, timeout=10
        ) as response:
            assert response.status_code == 200
            assert hold.started.wait(10)
        # The connection is closed: the worker must be told to stop.
        assert hold.cancelled.wait(10)
        wait_idle(url)


def test_a_client_that_leaves_mid_stream_leaves_no_task_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the first line the client goes: the generation stops, and no task of the request
    is left pending (asyncio logs "Task was destroyed but it is pending!" for such a one when
    it is collected)."""
    fake = fake_service(Settings(model="fake/model", warmup=False))  # type: ignore[call-arg]
    cat = DecodedObject("cat", (100, 100, 600, 600), 0.9, np.ones((64, 64), np.float32))
    for _ in range(3):
        fake.model.enqueue(Hold(found=[cat]))
    holds = list(fake.model.replies)
    with caplog.at_level(logging.ERROR, logger="asyncio"), live_server(fake.app()) as url:
        for hold in holds:
            data = {"prompt": "cat", "stream": "true", "mask_format": "none"}
            files = {"image_file": ("a.png", PNG)}
            with httpx.stream("POST", f"{url}/segment", data=data, files=files, timeout=10) as r:
                assert json.loads(next(r.iter_lines()))["type"] == "object"
            assert isinstance(hold, Hold) and hold.cancelled.wait(10)
        wait_idle(url)
        gc.collect()
    assert "Task was destroyed" not in caplog.text, caplog.text
