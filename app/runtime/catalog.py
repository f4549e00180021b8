"""The checkpoints this machine has: SEGMENT_MODEL plus every `owner/name` under
SEGMENT_MODELS_DIR (where `make models SEGMENT_MODEL=...` puts them). Read from files only.

Facts a request needs before its model is loaded (the input size, for one) come from here, for
the checkpoint the request names, never from whichever model happens to be resident. Clients of
the service this one replaces name Google's checkpoint (`google/paligemma2-3b-mix-448`) where
the service runs its MLX conversion (`mlx-community/paligemma2-3b-mix-448-8bit`): both names
are accepted for it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from app.config import DEMO_MODEL, Settings
from app.errors import BadInput, NotReady, shorten
from app.runtime.demo_model import ensure_demo

CONVERTER = "mlx-community"  # the Hub owner whose PaliGemma names map to Google's
# What mlx-community appends to a converted checkpoint's name.
CONVERSION_SUFFIX = re.compile(r"-(?:\d+bit|bf16|fp16|fp32|mxfp\d+|nvfp\d+)$")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # `owner/name`: what `make models` can download
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own cap on its JSON header


@dataclass(frozen=True)
class Checkpoint:
    id: str  # what model_id names it by (the Hub id, or the directory given as SEGMENT_MODEL)
    path: Path
    input_size: int | None  # pixels per side the model sees (None: unreadable config)
    quantization: str | None  # "8-bit", or None for float weights
    bytes: int  # weight files on disk
    random_weights: bool

    def names(self) -> list[str]:
        return accepted_model_ids(self.id)


def original_hub_id(model: str) -> str | None:
    """`mlx-community/paligemma2-3b-mix-448-8bit` (or a directory `.../mlx-community/<that>`)
    -> `google/paligemma2-3b-mix-448`; None for anything else. Only mlx-community's PaliGemma
    conversions map back: a local or random model named `paligemma2-tiny` converts no Google
    checkpoint, so it gets no Google alias."""
    path = PurePath(model.rstrip("/"))
    name = CONVERSION_SUFFIX.sub("", path.name)
    if path.parent.name != CONVERTER or not name.startswith("paligemma"):
        return None
    return f"google/{name}"


def accepted_model_ids(model: str) -> list[str]:
    """A checkpoint's own name first, then its original Hub id when it has one."""
    original = original_hub_id(model)
    return [model] if original in (None, model) else [model, original]


def not_installed_detail(model_id: str, installed: list[str], default: str) -> str:
    """Why `model_id` names nothing here: installing is suggested only for what could be a Hub
    id (`owner/name`); Swagger's placeholder `string`, say, is named as what it is."""
    shown = shorten(model_id)
    owner, _, name = model_id.partition("/")
    if owner == "google" and HUB_ID.fullmatch(model_id):  # the service runs MLX conversions
        fix = f"`make models SEGMENT_MODEL={CONVERTER}/{shorten(name)}-8bit` installs its MLX "
        fix += "conversion, if the Hub has one"
    elif HUB_ID.fullmatch(model_id):
        fix = f"`make models SEGMENT_MODEL={shown}` installs it, if the Hub has it"
    else:
        fix = "it is not a Hub id (owner/name) either, so there is nothing to install"
    return (
        f"model_id {shown!r} is not installed here (installed: {', '.join(installed)}; GET "
        f"/models lists them and their aliases); {fix}. Omit model_id for {default!r}."
    )


def installed_models(settings: Settings) -> list[Checkpoint]:
    """SEGMENT_MODEL first (when present), then the others by id."""
    return [describe(model_id, path) for model_id, path in installed_paths(settings).items()]


def installed_paths(settings: Settings) -> dict[str, Path]:
    """Id -> directory of every installed checkpoint; directory names only, no file reads."""
    found: dict[str, Path] = {}
    default = settings.model_path()
    if (default / "config.json").is_file():
        found[settings.model] = default
    demo = settings.demo_path()
    if DEMO_MODEL not in found and (demo / "config.json").is_file():
        found[DEMO_MODEL] = demo
    if settings.models_dir.is_dir():
        for config in sorted(settings.models_dir.glob("*/*/config.json")):
            directory = config.parent
            if directory.resolve() != default.resolve():
                found[f"{directory.parent.name}/{directory.name}"] = directory
    return found


def find_model(settings: Settings, model_id: str | None) -> Checkpoint | None:
    """The installed checkpoint `model_id` names (any of its names); None if none does."""
    wanted = model_id or settings.model
    if wanted == DEMO_MODEL:
        ensure_demo(settings)
    for installed_id, path in installed_paths(settings).items():
        if wanted in accepted_model_ids(installed_id):
            return describe(installed_id, path)
    return None


def resolve(settings: Settings, model_id: str | None) -> Checkpoint:
    """The checkpoint a request asks for (None: SEGMENT_MODEL), ready to be loaded; a 400 for
    a name nothing installed answers to, a 503 for one that is installed but not usable."""
    checkpoint = find_model(settings, model_id)
    if checkpoint is None and model_id and model_id not in accepted_model_ids(settings.model):
        names = list(installed_paths(settings)) or [settings.model]
        raise BadInput(not_installed_detail(model_id, names, settings.model))
    if checkpoint is None:
        places = " and in ".join(str(place) for place in settings.model_locations())
        raise NotReady(
            f"The model {settings.model!r} is not installed (looked in {places}). Run "
            "`make models` to download it, or set SEGMENT_MODEL=demo to try a tiny random model."
        )
    check_loadable(checkpoint)
    return checkpoint


def check_loadable(checkpoint: Checkpoint) -> None:
    """Everything loading reads is there and whole: the configs parse and the weight files are
    complete. A 503 naming the checkpoint and the problem otherwise, before anything resident
    is evicted to make room for it."""
    problem = checkpoint_problem(checkpoint.path)
    if problem is not None:
        raise NotReady(
            f"The model {checkpoint.id!r} is not (completely) installed: {problem}. "
            f"`make models SEGMENT_MODEL={checkpoint.id}` installs it again.",
            retry_after_s=30,
        )
    if checkpoint.input_size is None:
        raise NotReady(f"The model {checkpoint.id!r} has no image size in its processor config.")


def describe(model_id: str, path: Path) -> Checkpoint:
    config = _json(path / "config.json")
    size = _json(path / "preprocessor_config.json").get("size", {})
    quantization = config.get("quantization")
    bits = quantization.get("bits") if isinstance(quantization, dict) else None
    height = size.get("height") if isinstance(size, dict) else None
    return Checkpoint(
        id=model_id,
        path=path,
        input_size=height if isinstance(height, int) and height > 0 else None,
        quantization=f"{bits}-bit" if bits else None,
        bytes=sum(_size(f) for f in path.glob("*.safetensors")),
        random_weights=bool(config.get("random_weights", False)),
    )


def checkpoint_problem(path: Path) -> str | None:
    """What makes a checkpoint directory unloadable, in a few words; None if nothing does."""
    for name in ("config.json", "preprocessor_config.json"):
        if not _json(path / name):
            return f"{name} is missing or not a JSON object"
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return "it has no tokenizer file"
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            return f"{index.name} has no weight_map"
        shards = sorted({str(shard) for shard in weight_map.values()})
    else:
        shards = sorted(p.name for p in path.glob("*.safetensors"))
        if not shards:
            return "it has no *.safetensors weights"
    for shard in shards:
        trouble = safetensors_problem(path / shard)
        if trouble is not None:
            return f"{shard} {trouble}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Whether a .safetensors file is whole, from its header alone: a download cut short is
    shorter than the data its header describes."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > MAX_SAFETENSORS_HEADER:
                return "has an impossible header"
            header = json.loads(file.read(length))
            file_size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    except (OSError, struct.error, ValueError):
        return "is not a readable safetensors file"
    if not isinstance(header, dict):
        return "is not a readable safetensors file"
    ends = [
        offsets[1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict)
        for offsets in [entry.get("data_offsets")]
        if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int)
    ]
    if len(ends) != sum(1 for key in header if key != "__metadata__"):
        return "is not a readable safetensors file"
    if file_size < 8 + length + max(ends, default=0):
        return "is cut short (an interrupted download?)"
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # a dangling link, say
        return 0


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
