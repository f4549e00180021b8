"""SEGMENT_KEEP_ALIVE: an idle model is unloaded and comes back on the next request."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings, keep_alive_seconds
from scripts.harness import local_client, tiny_settings, wait_healthy
from tests.fake_model import fake_service
from tests.images import gradient, image_bytes

PNG = image_bytes(gradient(64, 48))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("0", 0), ("90", 90), ("-1", None)],
)
def test_durations_read_like_ollamas(text: str, seconds: float | None) -> None:
    assert keep_alive_seconds(text) == seconds


def test_an_unreadable_duration_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="30s, 5m, 1h"):
        Settings(keep_alive="5 minutes")  # type: ignore[call-arg]


def post(client: TestClient) -> Any:
    return client.post("/segment", data={"prompt": "cat"}, files={"image_file": ("a.png", PNG)})


def health_when(client: TestClient, loaded: bool, timeout_s: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (health := client.get("/health").json())["loaded"] != loaded:
        assert time.monotonic() < deadline, health
        time.sleep(0.02)
    return health  # type: ignore[no-any-return]


def test_zero_unloads_after_each_request_and_the_next_one_loads_again() -> None:
    fake = fake_service(Settings(model="fake/model", warmup=False, keep_alive="0"))  # type: ignore[call-arg]
    with local_client(fake.app()) as client:
        wait_healthy(client)
        health = health_when(client, loaded=False)  # idle since start-up: unloaded at once
        assert health["status"] == "ok"  # unloaded is not unavailable: /health stays 200
        first = post(client)
        assert first.status_code == 200 and "load" in first.json()["timings_ms"]
        health_when(client, loaded=False)
        assert (fake.model.loads, fake.model.unloads) == (2, 2)


def test_a_duration_keeps_it_then_lets_it_go() -> None:
    fake = fake_service(Settings(model="fake/model", warmup=False, keep_alive="1s"))  # type: ignore[call-arg]
    with local_client(fake.app()) as client:
        wait_healthy(client)
        assert post(client).status_code == 200
        health = client.get("/health").json()
        assert health["loaded"] is True
        expires = datetime.fromisoformat(health["expires_at"])
        assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 1.0
        time.sleep(0.5)
        again = post(client)
        assert again.status_code == 200, again.text
        assert "load" not in again.json()["timings_ms"]  # still warm: no reload
        health = client.get("/health").json()
        assert health["loaded"] is True and health["expires_at"] is not None, health
        # The countdown restarted: it now ends ~0.5 s after the first one would have.
        restarted = datetime.fromisoformat(health["expires_at"])
        assert (restarted - expires).total_seconds() >= 0.4, (expires, restarted)
        health_when(client, loaded=False, timeout_s=3)
        assert fake.model.unloads == 1


def test_minus_one_never_unloads() -> None:
    fake = fake_service(Settings(model="fake/model", warmup=False, keep_alive="-1"))  # type: ignore[call-arg]
    with local_client(fake.app()) as client:
        wait_healthy(client)
        assert post(client).status_code == 200
        time.sleep(0.2)
        health = client.get("/health").json()
        assert health["loaded"] is True and health["expires_at"] is None
        assert fake.model.unloads == 0


def test_the_real_model_unloads_and_reloads(tiny_model_dir: Path) -> None:
    settings = tiny_settings(tiny_model_dir, keep_alive="0")
    with local_client(create_app(settings)) as client:
        wait_healthy(client)
        health_when(client, loaded=False, timeout_s=30)
        files = {"image_file": ("a.png", PNG)}
        again = client.post("/segment", data={"prompt": "cat"}, files=files)
        assert again.status_code == 200, again.text
        assert again.json()["timings_ms"]["load"] > 0 and again.json()["objects"]
        health_when(client, loaded=False, timeout_s=30)
