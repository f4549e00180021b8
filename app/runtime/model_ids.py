"""The names a request may use for the served model in `model_id`.

Clients of the service this one replaces name Google's checkpoint (`google/paligemma2-3b-mix-
448`); the service runs its MLX conversion (`mlx-community/paligemma2-3b-mix-448-8bit`). Both
name the same model, so both are accepted.
"""

from __future__ import annotations

import re
from pathlib import PurePath

# What mlx-community appends to a converted checkpoint's name.
CONVERSION_SUFFIX = re.compile(r"-(?:\d+bit|bf16|fp16|fp32|mxfp\d+|nvfp\d+)$")


def original_hub_id(model: str) -> str | None:
    """`mlx-community/paligemma2-3b-mix-448-8bit` (or a local directory of that name) ->
    `google/paligemma2-3b-mix-448`; None for names that are not a PaliGemma conversion."""
    name = CONVERSION_SUFFIX.sub("", PurePath(model.rstrip("/")).name)
    return f"google/{name}" if name.startswith("paligemma") else None


def accepted_model_ids(model: str) -> list[str]:
    """The served model's own name first, then its original Hub id when it has one."""
    original = original_hub_id(model)
    return [model] if original in (None, model) else [model, original]
