"""Make a random model "say" a chosen output, so the real pipeline runs on a known sequence.

Random weights never emit a valid `<loc>x4 <seg>x16 label` sequence by themselves; a logits
processor that makes the scripted token win each greedy step exercises the real generation,
parsing, decoding and placement code end to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx


class ScriptedOutput:
    """What the model will say next; tests change `text` between requests."""

    def __init__(self, tokenizer: Any, text: str = "") -> None:
        self.tokenizer = tokenizer
        self.text = text

    def token_ids(self) -> list[int]:
        ids = self.tokenizer.encode(self.text, add_special_tokens=False)
        return [*ids, self.tokenizer.eos_token_id]

    def processors(self) -> Sequence[Any]:
        """A fresh processor per generation (the runner calls this for every request)."""
        return [_ForceSequence(self.token_ids())] if self.text else []


class _ForceSequence:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.prompt_length: int | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.prompt_length is None:  # the first call sees the prompt only
            self.prompt_length = tokens.shape[0]
        step = tokens.shape[0] - self.prompt_length
        target = self.ids[min(step, len(self.ids) - 1)]
        # A large margin rather than -inf elsewhere: the scripted token wins, nothing is NaN.
        return logits + 100.0 * (mx.arange(logits.shape[-1]) == target)


THREE_OBJECTS = (
    "<loc0100><loc0200><loc0600><loc0700>{s0} cat ; "
    "<loc0500><loc0050><loc1000><loc0400>{s1} dog ; "
    "<loc0050><loc0600><loc0300><loc0950>{s2} left wheel"
)


def three_objects() -> str:
    """The benchmarks' answer to 'cat ; dog ; left wheel': three segmented objects."""
    codes = ["".join(f"<seg{(7 * i + j) % 128:03d}>" for j in range(16)) for i in range(3)]
    return THREE_OBJECTS.format(s0=codes[0], s1=codes[1], s2=codes[2])
