"""Choosing OpenBLAS for MLX's CPU backend on Linux, and only there."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.blas import MARKER, find_openblas, preload_environment

LIB = Path("/opt/lib/libopenblas.so")


def test_linux_preloads_openblas() -> None:
    env = preload_environment({"PATH": "/bin"}, "linux", LIB)
    assert env is not None and env["LD_PRELOAD"] == str(LIB) and env[MARKER] == str(LIB)
    assert env["PATH"] == "/bin"


def test_existing_preloads_are_kept() -> None:
    env = preload_environment({"LD_PRELOAD": "/x/libjemalloc.so"}, "linux", LIB)
    assert env is not None and env["LD_PRELOAD"] == f"{LIB}:/x/libjemalloc.so"


@pytest.mark.parametrize(
    ("environ", "platform", "library"),
    [
        ({}, "darwin", LIB),  # macOS: Metal and Accelerate, never touched
        ({}, "linux", None),  # nothing to preload
        ({"SEGMENT_BLAS": "bundled"}, "linux", LIB),  # turned off
        ({MARKER: str(LIB)}, "linux", LIB),  # already re-executed: no loop
        ({"LD_PRELOAD": "/usr/lib/libopenblas.so.0"}, "linux", LIB),  # user's own choice
    ],
)
def test_no_preload(environ: dict[str, str], platform: str, library: Path | None) -> None:
    assert preload_environment(environ, platform, library) is None


def test_the_opencv_wheel_brings_an_openblas() -> None:
    library = find_openblas()
    assert library is not None and library.is_file() and "openblas" in library.name
