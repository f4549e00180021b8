"""Start-up as a login agent needs it: the port bound before anything loads, the model loaded at
start or on the first request, a failed load retried without a restart, bounded logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.listen import CannotListen, PortBusy, busy_message, listen
from app.config import Settings
from app.config.logs import configure_logging, trim_if_file
from scripts.harness import (
    ROOT,
    AppProcess,
    free_port,
    health_until,
    live_server,
    local_client,
    tiny_settings,
    wait_healthy,
)
from tests.fake_model import fake_service
from tests.images import gradient, image_bytes

EXIT_PORT_BUSY = 75

# `python -m app` with an audit hook that reports every weight file the process opens.
WATCHED = textwrap.dedent(
    """
    import sys
    def report(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].endswith(
            (".safetensors", ".npz")
        ):
            print("opened-weights:", args[0], file=sys.stderr, flush=True)
    sys.addaudithook(report)
    from app.__main__ import main
    main()
    """
)


def segment(client: httpx.Client | TestClient) -> Any:
    return client.post(
        "/segment",
        data={"prompt": "cat"},
        files={"image_file": ("a.png", image_bytes(gradient(32, 24)))},
    )


# -- bind first --------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_taken_port_is_one_line_and_an_exit_before_any_weight_is_read(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", WATCHED],
            cwd=ROOT,
            env=_env(tiny_model_dir, port),
            capture_output=True,
            text=True,
            timeout=60,
        )
        seconds = time.monotonic() - started
    assert done.returncode == EXIT_PORT_BUSY, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"error: port {port} on 127.0.0.1 is")
    assert "SEGMENT_PORT" in lines[0] and "lsof" in lines[0]
    assert seconds < 15, seconds  # imports and the BLAS re-exec; no model
    # The same watcher on a free port does see the weights opened: the hook works.
    with AppProcess(tiny_model_dir, tmp_path / "out.log", [sys.executable, "-c", WATCHED]) as app:
        app.wait_healthy()
        assert "opened-weights:" in app.log.read_text()


def _env(model_dir: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "SEGMENT_MODEL": str(model_dir),
        "SEGMENT_VAE_PATH": str(model_dir / "vae-oid.npz"),
        "SEGMENT_PORT": str(port),
    }


def test_a_port_held_by_this_service_says_so(tmp_path: Path) -> None:
    service = fake_service(Settings(model="fake/model"))
    with live_server(service.app()) as url:
        port = int(url.rsplit(":", 1)[1])
        message = busy_message("127.0.0.1", port)
        with pytest.raises(PortBusy, match="another copy of this service"):
            listen("127.0.0.1", port)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert "model fake/model" in message and "make agent-status" in message


def test_an_address_of_another_machine_cannot_be_listened_on() -> None:
    with pytest.raises(CannotListen, match="SEGMENT_HOST"):
        listen("192.0.2.1", free_port())  # TEST-NET-1: never this machine's


def test_an_address_that_is_off_here_is_skipped_when_another_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    documentation_only = (socket.AF_INET6, ("2001:db8::1", port))  # never this machine's
    loopback = (socket.AF_INET, ("127.0.0.1", port))
    monkeypatch.setattr("app.api.listen._addresses", lambda *_: [documentation_only, loopback])
    sockets = listen("localhost", port)
    try:
        assert [s.getsockname()[:2] for s in sockets] == [("127.0.0.1", port)]
    finally:
        for sock in sockets:
            sock.close()
    monkeypatch.setattr("app.api.listen._addresses", lambda *_: [documentation_only])
    with pytest.raises(CannotListen):
        listen("localhost", port)


def test_listen_gives_sockets_that_accept() -> None:
    sockets = listen("127.0.0.1", 0)
    try:
        port = sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the backlog takes it before anything serves
    finally:
        for sock in sockets:
            sock.close()


# -- load lazily, retry always ----------------------------------------------------------------
def test_without_preload_the_first_request_loads_the_model(tiny_model_dir: Path) -> None:
    from app.runtime.pool import create_worker

    settings = tiny_settings(tiny_model_dir, preload=False, warmup=False)
    worker = create_worker(settings)
    with local_client(create_app(settings, worker)) as client:
        health = wait_healthy(client)
        assert health["loaded"] is False and health["loaded_at"] is None
        assert health["device"] in ("cpu", "gpu") and health["random_weights"] is True
        assert health["expires_at"] is None  # nothing to unload yet
        assert worker.backend.loaded_models() == []
        answer = segment(client)
        assert answer.status_code == 200, answer.text
        assert "load" in answer.json()["timings_ms"]
        after = client.get("/health").json()
        assert after["loaded"] is True and after["loaded_at"] is not None


def _late_settings(tmp_path: Path, **overrides: Any) -> tuple[Settings, Path]:
    late = tmp_path / "models" / "late-model"
    settings = Settings(model=str(late), vae_path=late / "vae-oid.npz", warmup=False, **overrides)
    return settings, late


def _install(tiny_model_dir: Path, target: Path) -> None:
    """Put the checkpoint in place whole at once, as `make models` does."""
    partial = target.with_name(target.name + ".partial")
    shutil.copytree(tiny_model_dir, partial)
    partial.rename(target)


def test_weights_that_appear_later_are_loaded_without_a_request(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from app.runtime.pool import create_worker

    settings, late = _late_settings(tmp_path, preload=True, load_retry_s=0.2)
    with local_client(create_app(settings, create_worker(settings))) as client:
        failed = health_until(client, lambda h: h["status"] == "error", "the load fails")
        assert str(late) in failed["reason"] and "not installed" in failed["reason"]
        assert client.get("/health").status_code == 503
        refused = segment(client)
        assert refused.status_code == 503 and "not installed" in refused.json()["detail"]
        _install(tiny_model_dir, late)
        health = health_until(client, lambda h: h["loaded"], "the model appears", timeout_s=60)
        assert health["status"] == "ok" and health["reason"] is None
        assert segment(client).status_code == 200


def test_a_request_retries_the_load_once_the_weights_are_there(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from app.runtime.pool import create_worker

    # No periodic look (an hour): only the request can notice.
    settings, late = _late_settings(tmp_path, preload=False, load_retry_s=3600)
    with local_client(create_app(settings, create_worker(settings))) as client:
        health_until(client, lambda h: h["status"] == "error", "the check fails")
        _install(tiny_model_dir, late)
        assert client.get("/health").json()["status"] == "error"  # nothing looked yet
        answer = segment(client)
        assert answer.status_code == 200, answer.text
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["loaded"] is True


def test_a_load_that_failed_with_whole_files_is_retried_by_the_next_request(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from app.runtime.pool import create_worker

    settings, late = _late_settings(tmp_path, preload=True, load_retry_s=0.05)
    _install(tiny_model_dir, late)
    config = late / "config.json"
    good = config.read_text()
    wrong = json.loads(good)
    wrong["text_config"]["intermediate_size"] *= 2  # the weights no longer fit: loading fails
    config.write_text(json.dumps(wrong))
    with local_client(create_app(settings, create_worker(settings))) as client:
        failed = health_until(client, lambda h: h["status"] == "error", "the load fails")
        assert failed["reason"]
        refused = segment(client)  # the request tried again, and failed the same way
        assert refused.status_code == 503 and "could not be loaded" in refused.json()["detail"]
        config.write_text(good)
        answer = segment(client)
        assert answer.status_code == 200, answer.text
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["loaded"] is True


# -- bounded logs ------------------------------------------------------------------------------
@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_the_log_file_rotates_by_size(tmp_path: Path, root_logging: None) -> None:
    log_file = tmp_path / "Logs" / "service.log"
    configure_logging(Settings(log_file=log_file, log_max_mb=1, log_backups=2))
    line = "x" * 1000
    for number in range(4500):  # ~4.5 MB: more than the file and its two backups hold
        logging.getLogger("app").info("%d %s", number, line)
    files = sorted(path.name for path in log_file.parent.iterdir())
    assert files == ["service.log", "service.log.1", "service.log.2"]
    sizes = [path.stat().st_size for path in log_file.parent.iterdir()]
    assert max(sizes) <= 1024 * 1024 and sum(sizes) <= 3 * 1024 * 1024
    assert "4499 " in log_file.read_text()  # the newest line is in the current file


def test_trim_empties_a_big_stderr_file_only(tmp_path: Path) -> None:
    big, small = tmp_path / "big.log", tmp_path / "small.log"
    big.write_text("old line\n" * 200_000)  # 1.8 MB
    small.write_text("kept\n")
    with big.open("a") as stream:
        assert trim_if_file(stream, 1024 * 1024)
        print("new line", file=stream)
    assert big.read_text().splitlines() == [
        "(earlier output, 1.7 MB, removed at start-up)",
        "new line",
    ]
    with small.open("a") as stream:
        assert not trim_if_file(stream, 1024 * 1024)
    assert small.read_text() == "kept\n"
    read_end, write_end = os.pipe()  # a terminal or a pipe is left alone
    with os.fdopen(read_end) as _, os.fdopen(write_end, "w") as pipe:
        assert not trim_if_file(pipe, 0)


@pytest.mark.slow
def test_the_agents_way_logs_to_its_file_and_loads_on_the_first_request(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "Logs" / "service.log"
    env = {"SEGMENT_PRELOAD": "false", "SEGMENT_LOG_FILE": str(log_file)}
    with AppProcess(tiny_model_dir, tmp_path / "stderr.log", env=env) as app:
        app.wait_healthy(timeout_s=60)
        assert httpx.get(f"{app.url}/health", timeout=5).json()["loaded"] is False
        with httpx.Client(base_url=app.url, timeout=120) as client:
            assert segment(client).status_code == 200
        logged = log_file.read_text()
    assert f"serving on {app.url}" in logged and "loads on the first request" in logged
    assert '"POST /segment HTTP/1.1" 200' in logged  # uvicorn's access log too
    assert "serving on" not in app.log.read_text()  # stderr keeps only the early lines
