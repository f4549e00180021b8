"""Shared fixtures: the tiny random PaliGemma 2 is built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight PaliGemma 2 (real architecture) plus `vae-oid.npz`, built locally."""
    from scripts.make_tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "paligemma2-tiny")
