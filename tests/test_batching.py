"""Continuous batching: requests of one model decode together, join and leave at any step, and
each gets the answer it would get alone."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from app.api.app import create_app
from app.config import Settings
from app.model.messages import DecodedObject, ModelOutput, ModelRequest
from app.runtime.pool import create_worker
from scripts.harness import health_until, live_server, local_client, tiny_settings, wait_healthy
from tests.fake_model import FakeService, Hold, Reply, fake_service
from tests.images import image_bytes

CAT = DecodedObject("cat", (100, 100, 600, 600), 0.9, np.ones((64, 64), np.float32))


def fake(**overrides: Any) -> FakeService:
    sizes = overrides.pop("input_sizes", None)
    return fake_service(Settings(model="fake/model", warmup=False, **overrides), sizes)  # type: ignore[call-arg]


def post(client: Any, **form: str) -> Any:
    png = image_bytes(Image.new("RGB", (64, 48), (90, 120, 30)))
    return client.post(
        "/segment", data={"prompt": "cat", **form}, files={"image_file": ("a.png", png)}
    )


# -- scheduling, on a fake model -------------------------------------------------------------------
def test_a_request_arriving_while_others_decode_joins_the_batch() -> None:
    service = fake(max_batch=4)
    holds = [Hold() for _ in range(3)]
    service.model.enqueue(*holds, Reply(objects=[CAT]))
    with local_client(service.app()) as client, ThreadPoolExecutor(4) as pool:
        wait_healthy(client)
        try:
            held = [pool.submit(post, client) for _ in holds]
            health_until(client, lambda h: h["running"] == 3, "three requests never decoded")
            late = post(client)  # answered while the three still decode
            assert late.status_code == 200 and [o["label"] for o in late.json()["objects"]] == [
                "cat"
            ]
            assert client.get("/health").json()["running"] == 3  # they are still there
        finally:
            for hold in holds:
                hold.release.set()
        assert [f.result().status_code for f in held] == [200] * 3
    assert service.model.fake_batch.largest == 4


def test_beyond_the_batch_size_requests_wait_their_turn() -> None:
    service = fake(max_batch=2)
    holds = [Hold() for _ in range(3)]
    service.model.enqueue(*holds)
    with local_client(service.app()) as client, ThreadPoolExecutor(3) as pool:
        wait_healthy(client)
        try:
            answers = [pool.submit(post, client) for _ in holds]
            health = health_until(
                client, lambda h: (h["running"], h["waiting"]) == (2, 1), "two never ran"
            )
            assert not holds[2].started.is_set()
            holds[0].release.set()  # one leaves at once, the third takes its place
            assert holds[2].started.wait(10), health
        finally:
            for hold in holds:
                hold.release.set()
        assert [f.result().status_code for f in answers] == [200] * 3
    assert service.model.fake_batch.largest == 2


def test_a_request_for_another_model_waits_for_the_batch_to_drain() -> None:
    """No swap under a running batch, and nothing overtakes the request that waits for one."""
    service = fake(max_batch=4, input_sizes={"fake/model": 224, "fake/other": 448})
    first = Hold()
    service.model.enqueue(first, Reply(), Reply())
    with local_client(service.app()) as client, ThreadPoolExecutor(3) as pool:
        wait_healthy(client)
        try:
            running = pool.submit(post, client)
            assert first.started.wait(10)
            other = pool.submit(post, client, model_id="fake/other")
            health_until(client, lambda h: h["waiting"] == 1, "the other model never queued")
            same = pool.submit(post, client)  # same model as the batch, but after the other
            health_until(client, lambda h: h["waiting"] == 2, "the third never queued")
            assert [r.model_id for r in service.model.requests] == ["fake/model"]
        finally:
            first.release.set()
        assert running.result().status_code == other.result().status_code == 200
        assert same.result().status_code == 200
    order = [r.model_id for r in service.model.requests]
    assert order == ["fake/model", "fake/other", "fake/model"]


def test_a_cancelled_request_leaves_the_batch_and_the_others_go_on() -> None:
    service = fake(max_batch=4)
    leaving, staying = Hold(found=[CAT]), Hold(found=[CAT])
    service.model.enqueue(leaving, staying)

    async def scenario() -> None:
        await service.worker.wait_ready()
        gone = service.worker.submit(ModelRequest(Image.new("RGB", (4, 4)), "x", 4, "fake/model"))
        kept = service.worker.submit(ModelRequest(Image.new("RGB", (4, 4)), "x", 4, "fake/model"))
        async with gone, kept:
            assert isinstance(await anext(gone), DecodedObject)
            assert isinstance(await anext(kept), DecodedObject)
            await gone.aclose()  # the client left
            assert await asyncio.to_thread(leaving.cancelled.wait, 5)
            staying.release.set()
            assert isinstance(await anext(kept), ModelOutput)
        status = service.worker.status()
        assert (status.running, status.waiting) == (0, 0) and not staying.cancelled.is_set()
        await service.worker.close()

    asyncio.run(scenario())


# -- the same answers as alone, on the tiny model ---------------------------------------------
PROMPTS = ["cat", "cat ; dog", "detect car ; left wheel", "dog ; cat ; car", "segment wheel"]


def photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    return image_bytes(Image.fromarray(pixels), "PNG")


@pytest.fixture(scope="module")
def answers_alone(tiny_model_dir: Path) -> list[dict[str, Any]]:
    settings = tiny_settings(tiny_model_dir, max_batch=1)
    with local_client(create_app(settings, create_worker(settings))) as client:
        wait_healthy(client)
        return [segment(client, prompt, photo(index)) for index, prompt in enumerate(PROMPTS)]


def segment(client: Any, prompt: str, data: bytes, **form: str) -> dict[str, Any]:
    response = client.post(
        "/segment",
        data={"prompt": prompt, "mask_format": "rle", **form},
        files={"image_file": ("p.png", data)},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def same(batched: dict[str, Any], alone: dict[str, Any]) -> None:
    assert batched["text"] == alone["text"] and alone["objects"]  # the demo writes one per class
    for ours, theirs in zip(batched["objects"], alone["objects"], strict=True):
        assert (ours["label"], ours["box"], ours["mask"]) == (
            theirs["label"],
            theirs["box"],
            theirs["mask"],
        )
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)


@pytest.mark.slow
def test_batched_requests_get_what_they_get_alone(
    tiny_model_dir: Path, answers_alone: list[dict[str, Any]]
) -> None:
    """Five requests of different lengths (1 to 3 objects, detect and segment) at once, on
    the demo model: the same tokens, boxes and masks as each alone; one more that leaves in the
    middle of the batch costs the others nothing."""
    settings = tiny_settings(tiny_model_dir, max_batch=8)
    worker = create_worker(settings)
    with live_server(create_app(settings, worker)) as url:
        wait_healthy(url)
        start = threading.Barrier(len(PROMPTS) + 1)

        def one(index: int) -> dict[str, Any]:
            start.wait(10)
            with httpx.Client(base_url=url, timeout=60) as client:
                return segment(client, PROMPTS[index], photo(index))

        def leaver() -> None:  # streams, reads its first object, and goes
            start.wait(10)
            data = {"prompt": "dog ; cat ; car", "stream": "true"}
            files = {"image_file": ("p.png", photo(99))}
            with httpx.stream("POST", f"{url}/segment", data=data, files=files, timeout=60) as r:
                next(r.iter_lines())

        with ThreadPoolExecutor(len(PROMPTS) + 1) as pool:
            futures = [pool.submit(one, index) for index in range(len(PROMPTS))]
            gone = pool.submit(leaver)
            batched = [future.result() for future in futures]
            gone.result()
        assert worker.status().largest_batch >= 3  # they did decode together
        for ours, alone in zip(batched, answers_alone, strict=True):
            same(ours, alone)
        health = httpx.get(f"{url}/health").json()
        assert (health["running"], health["waiting"]) == (0, 0), health


# -- every class on its own ----------------------------------------------------------------------
def test_per_class_runs_one_sequence_per_class_and_merges_in_class_order() -> None:
    service = fake(max_batch=4)
    dog = DecodedObject("dog", (100, 100, 600, 600), 0.8, None)
    # Each sequence's reply: cat's arrives last (two steps), yet comes first in the answer.
    service.model.enqueue(
        Reply(objects=[CAT, CAT], text="c"), Reply(objects=[dog], text="d"), Reply(text="")
    )
    with local_client(service.app()) as client:
        wait_healthy(client)
        response = post(client, prompt="detect cat ; dog ; bird", per_class="true")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r.task_prompt for r in service.model.requests] == [
        "detect cat",
        "detect dog",
        "detect bird",
    ]
    assert [o["label"] for o in body["objects"]] == ["cat", "cat", "dog"]
    assert body["text"] == "c ; d" and body["prompt"] == "detect cat ; dog ; bird"
    assert service.model.fake_batch.largest == 3  # decoded together


@pytest.mark.slow
def test_per_class_on_the_demo_model_finds_each_class(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir)
    with local_client(create_app(settings, create_worker(settings))) as client:
        wait_healthy(client)
        joint = segment(client, "dog ; cat ; car", photo(5))
        apart = segment(client, "dog ; cat ; car", photo(5), per_class="true")
    assert [o["label"] for o in apart["objects"]] == ["dog", "cat", "car"]
    assert [o["label"] for o in joint["objects"]] == ["dog", "cat", "car"]
    assert apart["text"].count(" ; ") == 2 and "prefill" in apart["timings_ms"]
    # Token counts: the image's 256 tokens in every prompt read; one object is 4 loc + 16 seg
    # + its label (+ " ;" between objects), so the three write about as many either way.
    assert joint["tokens"]["prompt"] > 256 and apart["tokens"]["prompt"] > 3 * 256
    assert 3 * 21 <= apart["tokens"]["generated"] <= joint["tokens"]["generated"] + 6
