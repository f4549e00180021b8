"""The checkpoints this machine has: SEGMENT_MODEL plus every `owner/name` under
SEGMENT_MODELS_DIR (where `make models SEGMENT_MODEL=...` puts them). Read from files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Settings
from app.runtime.model_ids import accepted_model_ids


@dataclass(frozen=True)
class InstalledModel:
    id: str  # what model_id names it by (the Hub id, or the directory given as SEGMENT_MODEL)
    path: Path
    input_size: int | None  # pixels per side the model sees
    quantization: str | None  # "8-bit", or None for float weights
    bytes: int  # weight files on disk
    random_weights: bool

    def names(self) -> list[str]:
        return accepted_model_ids(self.id)


def installed_models(settings: Settings) -> list[InstalledModel]:
    """SEGMENT_MODEL first (when present), then the others by id."""
    return [describe(model_id, path) for model_id, path in installed_paths(settings).items()]


def installed_paths(settings: Settings) -> dict[str, Path]:
    """Id -> directory of every installed checkpoint; directory names only, no file reads."""
    found: dict[str, Path] = {}
    default = settings.model_path()
    if (default / "config.json").is_file():
        found[settings.model] = default
    if settings.models_dir.is_dir():
        for config in sorted(settings.models_dir.glob("*/*/config.json")):
            directory = config.parent
            if directory.resolve() != default.resolve():
                found[f"{directory.parent.name}/{directory.name}"] = directory
    return found


def find_model(settings: Settings, model_id: str | None) -> InstalledModel | None:
    """The installed model `model_id` names (any of its names); None if none does."""
    wanted = model_id or settings.model
    for installed_id, path in installed_paths(settings).items():
        if wanted in accepted_model_ids(installed_id):
            return describe(installed_id, path)
    return None


def describe(model_id: str, path: Path) -> InstalledModel:
    config = _json(path / "config.json")
    size = _json(path / "preprocessor_config.json").get("size", {})
    quantization = config.get("quantization")
    bits = quantization.get("bits") if isinstance(quantization, dict) else None
    return InstalledModel(
        id=model_id,
        path=path,
        input_size=size.get("height") if isinstance(size, dict) else None,
        quantization=f"{bits}-bit" if bits else None,
        bytes=sum(f.stat().st_size for f in path.glob("*.safetensors")),
        random_weights=is_random_weights(path),
    )


def is_random_weights(model_dir: Path) -> bool:
    """The tiny demo model (scripts/make_tiny_model.py) marks its config.json as random."""
    return bool(_json(model_dir / "config.json").get("random_weights", False))


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
