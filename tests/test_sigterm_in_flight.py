"""SIGTERM (how launchd stops the agent) while a request is generating.

The in-flight request must finish or fail with a clear error, never hang; the process must
exit 0 (so KeepAlive does not restart it) within a bound, and free its port. The tiny random
model never emits a stop token, so `max_new_tokens` sets how long a request generates.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.server import GRACEFUL_SHUTDOWN_S
from scripts.harness import AppProcess
from tests.images import gradient, image_bytes

pytestmark = pytest.mark.slow  # starts a server process or a live server

MAX_NEW_TOKENS = 4096  # the settings' ceiling: room for requests many seconds long
EXIT_MARGIN_S = 10.0  # after the drain: stop at the next token, unload, exit


class Server(AppProcess):
    """`python -m app` (or `argv`) on the tiny model, allowed very long generations."""

    def __init__(self, model_dir: Path, log: Path, argv: list[str]) -> None:
        # Unconstrained: the output grammar would end the random model's output after one object.
        env = {"SEGMENT_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS), "SEGMENT_CONSTRAINED": "false"}
        super().__init__(model_dir, log, argv, env)

    def wait_generating(self, timeout_s: float = 10) -> None:
        """Until /health counts the request as running, plus a moment to reach the token loop."""
        deadline = time.monotonic() + timeout_s
        while (health := httpx.get(f"{self.url}/health", timeout=2).json())["running"] < 1:
            assert time.monotonic() < deadline, f"the request never reached the worker: {health}"
            time.sleep(0.02)
        time.sleep(0.3)

    def seconds_per_token(self, tokens: int = 64) -> float:
        response = segment(self.url, tokens)
        assert response.status_code == 200, response.text
        timings = response.json()["timings_ms"]
        return float(timings["generate"]) / 1000 / tokens


def segment(url: str, max_new_tokens: int) -> httpx.Response:
    return httpx.post(
        f"{url}/segment",
        data={"prompt": "cat", "max_new_tokens": str(max_new_tokens)},
        files={"image_file": ("a.png", image_bytes(gradient(64, 48)))},
        timeout=120,
    )


class InFlight(threading.Thread):
    """One /segment request on its own thread; records the reply (or error) and when."""

    def __init__(self, url: str, max_new_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.max_new_tokens = url, max_new_tokens
        self.response: httpx.Response | None = None
        self.error: httpx.HTTPError | None = None
        self.answered_at = 0.0

    def run(self) -> None:
        try:
            self.response = segment(self.url, self.max_new_tokens)
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.answered_at = time.monotonic()


def tokens_lasting(seconds: float, per_token_s: float) -> int:
    return max(16, min(MAX_NEW_TOKENS, int(seconds / per_token_s)))


SHORT_DRAIN = (
    "import app.api.server as s; s.GRACEFUL_SHUTDOWN_S = 1; import app.__main__ as m; m.main()"
)


@pytest.fixture(scope="module")
def servers(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """`python -m app` as launchd runs it, and the same with a 1 s drain (to keep tests short).

    Started together: loading the model dominates, and the two loads overlap.
    """
    logs = tmp_path_factory.mktemp("sigterm")
    started = {
        "default": Server(tiny_model_dir, logs / "default.log", [sys.executable, "-m", "app"]),
        "short_drain": Server(
            tiny_model_dir, logs / "short.log", [sys.executable, "-c", SHORT_DRAIN]
        ),
    }
    try:
        for server in started.values():
            server.wait_healthy()
        yield started
    finally:
        for server in started.values():
            server.stop()


def sigterm_during(server: Server, request: InFlight) -> tuple[float, float]:
    """Send SIGTERM once `request` is generating; (seconds to exit, seconds to the reply)."""
    request.start()
    server.wait_generating()
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0, server.log.read_text()
    exited = time.monotonic() - sent
    request.join(timeout=10)
    assert not request.is_alive(), "the request hung after the server exited"
    return exited, request.answered_at - sent


def test_a_request_in_flight_finishes_before_the_process_exits(
    servers: dict[str, Server],
) -> None:
    server = servers["default"]
    # About 3 s of generation: still running at SIGTERM, done well inside the 10 s drain.
    request = InFlight(server.url, tokens_lasting(3.0, server.seconds_per_token()))
    exited, answered = sigterm_during(server, request)
    assert request.response is not None, request.error
    assert request.response.status_code == 200, request.response.text
    assert request.response.json()["timings_ms"]["generate"] > 0  # a complete answer
    assert 0 < answered <= exited < GRACEFUL_SHUTDOWN_S + EXIT_MARGIN_S
    assert server.port_is_free()


def test_a_request_outlasting_the_drain_is_stopped_and_answered(
    servers: dict[str, Server],
) -> None:
    server = servers["short_drain"]
    # About 8 s of generation: far beyond the drain, so the worker must stop it mid-way.
    request = InFlight(server.url, tokens_lasting(8.0, server.seconds_per_token()))
    exited, answered = sigterm_during(server, request)
    # The generation stopped mid-way instead of running its ~8 s to the end.
    assert answered < 1 + EXIT_MARGIN_S and exited < 1 + EXIT_MARGIN_S
    assert server.port_is_free()
    assert request.response is not None, f"no HTTP answer: {request.error!r}"
    response = request.response
    # When the drain time is up the worker abandons the job, so the answer is a JSON 503,
    # not the bare 500 uvicorn gives a request it has to cancel itself.
    assert response.status_code == 503, response.text
    assert "shutting down" in response.json()["detail"]
