"""`python -m app` as users and launchd run it: settings from SEGMENT_* variables, real uvicorn."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.harness import AppProcess
from tests.images import gradient, image_bytes

pytestmark = pytest.mark.slow  # starts a server process or a live server


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    app = AppProcess(tiny_model_dir, log, env={"SEGMENT_MAX_PROMPT_CHARS": "40"})
    try:
        app.wait_healthy()
        yield app
    finally:
        app.stop()


def test_serves_with_settings_from_the_environment(
    server: AppProcess, tiny_model_dir: Path
) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["model"] == str(tiny_model_dir)
    ok = httpx.post(
        f"{server.url}/segment",
        data={"prompt": "cat"},
        files={"image_file": ("a.png", image_bytes(gradient(64, 48)))},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["width"] == 64
    too_long = httpx.post(
        f"{server.url}/segment",
        data={"prompt": "c" * 41},
        files={"image_file": ("a.png", image_bytes(gradient(8, 8)))},
    )
    assert too_long.status_code == 400 and "limit is 40" in too_long.json()["detail"]


@pytest.mark.skipif(sys.platform != "linux", reason="the OpenBLAS preload is Linux-only")
def test_linux_runs_mlx_on_openblas(server: AppProcess) -> None:
    """`python -m app` re-executed itself with OpenBLAS preloaded (app/blas.py)."""
    assert "CPU BLAS: OpenBLAS preloaded" in server.log.read_text()


def test_sigterm_stops_cleanly(server: AppProcess) -> None:
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert server.port_is_free()
