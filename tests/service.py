"""Helpers for tests that run the service in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.config import Settings

# The service refuses foreign Host headers (DNS-rebinding guard): talk to it as a local app does.
LOCAL_URL = "http://127.0.0.1:8000"
ROOT = Path(__file__).resolve().parent.parent


def local_client(app: FastAPI, **kwargs: Any) -> TestClient:
    return TestClient(app, base_url=LOCAL_URL, **kwargs)


def tiny_settings(model_dir: Path, **overrides: Any) -> Settings:
    return Settings(model=str(model_dir), vae_path=model_dir / "vae-oid.npz", **overrides)


def wait_healthy(client: TestClient, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/health")
        if response.status_code == 200:
            return response.json()  # type: ignore[no-any-return]
        assert response.json()["status"] == "loading", response.json()
        time.sleep(0.05)
    raise AssertionError("the service did not become healthy")


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """The app behind real uvicorn on a free loopback port, in a thread: real sockets, real
    streaming (TestClient buffers whole bodies, so it cannot show a limit tripping mid-stream)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AppProcess:
    """`python -m app` (or `argv`) on a model directory, as users and launchd run it, on a free
    loopback port; output goes to a file (a pipe could fill up and stall the server)."""

    def __init__(
        self,
        model_dir: Path,
        log: Path,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        full_env = {
            **os.environ,
            "SEGMENT_MODEL": str(model_dir),
            "SEGMENT_VAE_PATH": str(model_dir / "vae-oid.npz"),
            "SEGMENT_HOST": "127.0.0.1",
            "SEGMENT_PORT": self.url.rsplit(":", 1)[1],
            **(env or {}),
        }
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv or [sys.executable, "-m", "app"],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=out,
            )

    def wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not become healthy:\n{self.log.read_text()}")

    def port_is_free(self) -> bool:
        try:
            httpx.get(f"{self.url}/health", timeout=2)
        except httpx.ConnectError:
            return True
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
