"""Shared fixtures: no network, hub caches in a temp dir, the tiny model built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports huggingface_hub (it reads this once): tests never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _isolated_hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point every Hugging Face cache at a temp dir so tests never read or write the user's."""
    cache = tmp_path_factory.getbasetemp() / "hf-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(cache))
        mp.setenv("HF_HUB_CACHE", str(cache / "hub"))
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight PaliGemma 2 (real architecture) plus `vae-oid.npz`, built locally."""
    from app.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "paligemma2-tiny")
