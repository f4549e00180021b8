"""The one harness tests and benchmarks share: the tiny service in-process (with a scripted
answer), behind real uvicorn, or as a `python -m app` process; waits that always end.

Every wait has a deadline and fails saying what it saw, so a service that never comes up
fails its test in seconds instead of hanging until pytest's own timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.config import Settings
from app.runtime.blas import MARKER, find_openblas, preload_environment

# The service refuses foreign Host headers (DNS-rebinding guard): talk to it as a local app does.
LOCAL_URL = "http://127.0.0.1:8000"
ROOT = Path(__file__).resolve().parent.parent
HEALTHY_WITHIN_S = 120.0


def tiny_settings(model_dir: Path, **overrides: Any) -> Settings:
    return Settings(model=str(model_dir), vae_path=model_dir / "vae-oid.npz", **overrides)


def local_client(app: FastAPI, **kwargs: Any) -> TestClient:
    return TestClient(app, base_url=LOCAL_URL, **kwargs)


def scripted_app(model_dir: Path, text: str = "", **overrides: Any) -> tuple[FastAPI, Any]:
    """The real app and worker on the tiny model, made to say `text` (change `script.text`
    between requests); returns (app, script)."""
    from transformers import AutoTokenizer

    from app.api.app import create_app
    from app.runtime.pool import create_worker  # imports MLX
    from scripts.scripted_output import ScriptedOutput

    script = ScriptedOutput(AutoTokenizer.from_pretrained(str(model_dir)), text)
    settings = tiny_settings(model_dir, **overrides)
    worker = create_worker(settings, logits_processors=script.processors)
    return create_app(settings, worker), script


def wait_healthy(service: TestClient | str, timeout_s: float = HEALTHY_WITHIN_S) -> dict[str, Any]:
    """`GET /health` until 200 (a TestClient, or a base URL); fails on an error state or at
    the deadline, with the last answer."""
    deadline = time.monotonic() + timeout_s
    last: Any = "no answer"
    response: Any  # httpx's, or the TestClient's own client's
    while time.monotonic() < deadline:
        try:
            if isinstance(service, str):
                response = httpx.get(f"{service}/health", timeout=5)
            else:
                response = service.get("/health")
        except httpx.TransportError as exc:  # a server still starting
            last = exc
        else:
            last = response.json()
            if response.status_code == 200:
                return last
            assert last.get("status") == "loading", last
        time.sleep(0.05)
    raise AssertionError(f"the service did not become healthy in {timeout_s:g} s: {last}")


def health_until(
    client: TestClient, done: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 10
) -> dict[str, Any]:
    """`GET /health` until `done(body)`; fails after `timeout_s` naming `what` and the last body."""
    deadline = time.monotonic() + timeout_s
    while not done(health := client.get("/health").json()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s; last /health: {health}")
        time.sleep(0.01)
    return health


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """The app behind real uvicorn on a free loopback port, in a thread: real sockets, real
    streaming (TestClient buffers whole bodies, so it cannot show a limit tripping mid-stream)."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def blas_environment(environ: Mapping[str, str], preloaded: bool) -> dict[str, str]:
    """A child process's environment with MLX's CPU backend on OpenBLAS (as `python -m app`
    runs it on Linux) or on MLX's bundled BLAS; app.runtime.blas decides what that means."""
    bundled = {k: v for k, v in environ.items() if k not in ("LD_PRELOAD", MARKER)}
    if not preloaded:
        return bundled
    return preload_environment(bundled, sys.platform, find_openblas()) or bundled


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

    def __enter__(self) -> AppProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_healthy(self, timeout_s: float = HEALTHY_WITHIN_S) -> None:
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

    def environment(self) -> dict[str, str]:
        """The running process's environment as the OS sees it (Linux): what it re-executed
        itself with, for one."""
        raw = Path(f"/proc/{self.process.pid}/environ").read_bytes()
        pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
        return {k.decode(): v.decode(errors="replace") for k, _, v in pairs}

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
