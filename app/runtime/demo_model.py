"""`SEGMENT_MODEL=demo` (or `model_id=demo`, `--model demo`): the tiny random-weight PaliGemma 2
of app.model.tiny, built on first use into the models directory, so the README's examples run
anywhere without weights. Its answers are meaningless, and everything that shows them says so.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from app.config import Settings

log = logging.getLogger(__name__)


def ensure_demo(settings: Settings) -> Path:
    """The demo checkpoint's directory, built first if missing (about a second, no network).

    Built beside its place and renamed into it, so another process never sees half of it;
    if two build at once, the first rename wins and the other's copy is dropped.
    """
    target = settings.demo_path()
    if (target / "config.json").is_file():
        return target
    from app.model.tiny import build_tiny_model  # numpy, safetensors, tokenizers: no MLX

    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    build_tiny_model(partial)
    try:
        partial.rename(target)
    except OSError:  # another process got there first (or a stale, empty directory is there)
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    log.warning("built the DEMO model (random weights, meaningless answers) in %s", target)
    return target
