"""`python -m app` as users and launchd run it: settings from SEGMENT_* variables, real uvicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import gradient, image_bytes

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        **os.environ,
        "SEGMENT_MODEL": str(tiny_model_dir),
        "SEGMENT_VAE_PATH": str(tiny_model_dir / "vae-oid.npz"),
        "SEGMENT_HOST": "127.0.0.1",
        "SEGMENT_PORT": str(port),
        "SEGMENT_MAX_PROMPT_CHARS": "40",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("python -m app did not become healthy")
    yield process, url
    if process.poll() is None:
        process.kill()
        process.wait()


def test_serves_with_settings_from_the_environment(
    server: tuple[subprocess.Popen[bytes], str], tiny_model_dir: Path
) -> None:
    _, url = server
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == str(tiny_model_dir)
    ok = httpx.post(
        f"{url}/segment",
        data={"prompt": "cat"},
        files={"image_file": ("a.png", image_bytes(gradient(64, 48)))},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["width"] == 64
    too_long = httpx.post(
        f"{url}/segment",
        data={"prompt": "c" * 41},
        files={"image_file": ("a.png", image_bytes(gradient(8, 8)))},
    )
    assert too_long.status_code == 400 and "limit is 40" in too_long.json()["detail"]


def test_sigterm_stops_cleanly(server: tuple[subprocess.Popen[bytes], str]) -> None:
    process, url = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)
