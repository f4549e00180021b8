"""SEGMENT_KEEP_ALIVE, with Ollama's meaning: how long an idle model stays in memory.

`30s`, `5m`, `1h`, `1h30m` or plain seconds; `0` unloads after every request; any negative
value (`-1`) keeps it loaded for good.
"""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(text: str) -> float | None:
    """Seconds an idle model is kept, or None for "never unload". ValueError when unreadable."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value.lstrip("-"):
            raise ValueError(
                f"keep_alive {text!r} is not a duration: use e.g. 30s, 5m, 1h, 0 (unload after "
                "each request) or -1 (never unload)."
            ) from None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
        if value.startswith("-"):
            seconds = -seconds
    return None if seconds < 0 else seconds
