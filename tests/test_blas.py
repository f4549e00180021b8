"""Choosing OpenBLAS for MLX's CPU backend on Linux, and only there."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import pytest

from app.runtime.blas import MARKER, find_openblas, preload_environment
from scripts.harness import AppProcess

LIB = Path("/opt/lib/libopenblas.so")


def test_linux_preloads_openblas() -> None:
    env = preload_environment({"PATH": "/bin"}, "linux", LIB)
    assert env is not None and env["LD_PRELOAD"] == str(LIB) and env[MARKER] == str(LIB)
    assert env["PATH"] == "/bin"


def test_existing_preloads_are_kept() -> None:
    env = preload_environment({"LD_PRELOAD": "/x/libjemalloc.so"}, "linux", LIB)
    assert env is not None and env["LD_PRELOAD"] == f"{LIB}:/x/libjemalloc.so"


@pytest.mark.parametrize(
    ("environ", "platform", "library", "mode"),
    [
        ({}, "darwin", LIB, "auto"),  # macOS: Metal and Accelerate, never touched
        ({}, "linux", None, "auto"),  # nothing to preload
        ({}, "linux", LIB, "bundled"),  # turned off (SEGMENT_BLAS=bundled)
        ({MARKER: str(LIB)}, "linux", LIB, "auto"),  # already re-executed: no loop
        ({"LD_PRELOAD": "/usr/lib/libopenblas.so.0"}, "linux", LIB, "auto"),  # user's own choice
    ],
)
def test_no_preload(
    environ: dict[str, str], platform: str, library: Path | None, mode: Literal["auto", "bundled"]
) -> None:
    assert preload_environment(environ, platform, library, mode) is None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the OpenBLAS preload is Linux-only")
@pytest.mark.parametrize("setting", ["auto", "bundled"])
def test_the_setting_is_what_decides(setting: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """`python -m app` with SEGMENT_BLAS=auto re-executes itself with OpenBLAS preloaded;
    with SEGMENT_BLAS=bundled it runs as it was started."""
    server = AppProcess(tiny_model_dir, tmp_path / "server.log", env={"SEGMENT_BLAS": setting})
    try:
        server.wait_healthy()
        environment = server.environment()
    finally:
        server.stop()
    preloaded = "openblas" in environment.get("LD_PRELOAD", "")
    assert preloaded == (setting == "auto"), environment.get("LD_PRELOAD")
    assert (MARKER in environment) == (setting == "auto")
    log = (tmp_path / "server.log").read_text()
    assert ("CPU BLAS: OpenBLAS preloaded" in log) == (setting == "auto"), log


@pytest.mark.skipif(sys.platform != "linux", reason="the OpenBLAS preload is Linux-only")
def test_the_opencv_wheel_brings_an_openblas() -> None:
    library = find_openblas()
    assert library is not None and library.is_file() and "openblas" in library.name
