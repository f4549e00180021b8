"""Speed figures of one request from its `timings_ms` and token counts: pure arithmetic.

- prefill tokens/s: the prompt's tokens (image tokens included) over `prefill`, the language
  model's pass over that prefix; the vision tower (`vision`) is timed apart and shown apart.
- decode tokens/s: the tokens generated over `generate`, the time of the decoding steps.
- per object: `generate` plus `decode_masks` (the mask decoder's share), over the objects found:
  what one more object costs once the prompt is in.
A figure whose inputs are missing is None and shows as "n/a", never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Speed:
    prefill_tps: float | None
    decode_tps: float | None
    per_object_ms: float | None
    objects: int
    prompt_tokens: int | None
    new_tokens: int | None
    vision_ms: float | None
    total_ms: float | None


def speed(
    timings_ms: Mapping[str, float],
    prompt_tokens: int | None,
    new_tokens: int | None,
    objects: int,
) -> Speed:
    """The figures of one request (a single sequence: its times are its own)."""
    prefill = timings_ms.get("prefill")
    generate = timings_ms.get("generate")
    per_object = None
    if generate is not None and objects > 0:
        per_object = (generate + timings_ms.get("decode_masks", 0.0)) / objects
    return Speed(
        prefill_tps=_rate(prompt_tokens, prefill),
        decode_tps=_rate(new_tokens, generate),
        per_object_ms=per_object,
        objects=objects,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        vision_ms=timings_ms.get("vision"),
        total_ms=timings_ms.get("total"),
    )


def describe(figures: Speed) -> list[str]:
    """The figures as the verdict line's fields."""
    return [
        f"prefill {_num(figures.prefill_tps)} tok/s ({_num(figures.prompt_tokens)} tokens)",
        f"vision {_num(figures.vision_ms)} ms",
        f"decode {_num(figures.decode_tps)} tok/s ({_num(figures.new_tokens)} tokens)",
        f"{_num(figures.per_object_ms)} ms per object ({figures.objects} found)",
        f"total {_num(figures.total_ms)} ms",
    ]


def _rate(tokens: int | None, ms: float | None) -> float | None:
    if tokens is None or ms is None or ms <= 0:
        return None
    return tokens / (ms / 1000)


def _num(value: float | None) -> str:
    """Three significant figures are plenty for a speed; n/a when it is not known."""
    if value is None:
        return "n/a"
    if isinstance(value, int) or value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"
