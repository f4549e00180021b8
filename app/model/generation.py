"""Greedy decoding of many sequences at once over one PaliGemma: continuous batching.

Each sequence is prefilled alone (PaliGemma attends across its whole prefix, so nothing of one
prompt's prefill serves another) and then joins the running batch: its KV cache is merged in,
left-padded to the longest. Every `step` feeds each sequence its last token and computes the
next of all of them in one forward pass, which costs little more than one sequence's: decoding
is bound by reading the weights. Per sequence: its logits processors (a test seam, then its
output grammar), its token budget, the stop tokens, and the probability the model itself gave
each token. A sequence leaves the batch the moment it finishes or is dropped.

Everything here touches MLX: the service's MLX thread only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from app.model.grammar import OutputGrammar
from app.model.paligemma import PaliGemma, PieceStream
from app.steps.tokens import Piece

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass(frozen=True)
class Generation:
    """The record that ends a sequence, after its last piece."""

    text: str
    prompt_tokens: int
    new_tokens: int  # generated, the stop token not counted
    timings_ms: dict[str, float]  # preprocess, vision (0 when cached), prefill, generate


@dataclass(frozen=True)
class Advance:
    """What one token did for one sequence: the pieces it completed (a loc/seg token at once, a
    text run when it ends) and, when the sequence is over, its record."""

    key: Hashable
    pieces: list[Piece]
    done: Generation | None = None


@dataclass(eq=False)
class _Row:
    key: Hashable
    processors: list[LogitsProcessor]
    grammar: OutputGrammar | None
    context: list[int]  # what processors see: the last prompt token, then every token fed
    pieces: PieceStream
    budget: int
    prompt_tokens: int
    timings_ms: dict[str, float]
    texts: list[str] = field(default_factory=list)
    new_tokens: int = 0
    pending: int = -1  # the token sampled last: the input of the next step
    generating_s: float = 0.0  # this row's share of the steps' time


class Batch:
    """The sequences decoding together on one model; `add` one, `step` them all, `drop` one."""

    def __init__(self, paligemma: PaliGemma) -> None:
        self.paligemma = paligemma
        self._rows: list[_Row] = []
        self._cache: list[Any] | None = None  # one BatchKVCache per layer, a row per sequence

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def keys(self) -> list[Hashable]:
        return [row.key for row in self._rows]

    def add(
        self,
        key: Hashable,
        image: Image.Image,
        prompt: str,
        *,
        max_new_tokens: int,
        processors: Sequence[LogitsProcessor] = (),
        grammar: OutputGrammar | None = None,
    ) -> Advance:
        """Prefill the sequence and take its first token; it joins the batch unless that token
        already ended it. With a `grammar`, it runs last among the processors."""
        prefilled = self.paligemma.prefill(image, prompt)
        row = _Row(
            key=key,
            processors=[*processors, *([grammar] if grammar is not None else [])],
            grammar=grammar,
            context=[prefilled.last_prompt_token],
            pieces=PieceStream(self.paligemma.layout, self.paligemma.tokenizer),
            budget=max_new_tokens,
            prompt_tokens=prefilled.prompt_tokens,
            timings_ms=dict(prefilled.timings_ms),
        )
        started = time.perf_counter()
        [(token, prob)] = self._sample([row], prefilled.logits)
        row.generating_s += time.perf_counter() - started
        advance = self._advance(row, token, prob)
        if advance.done is None:
            self._join(row, prefilled.cache)
        return advance

    def step(self) -> list[Advance]:
        """One token more for every sequence; those that end leave the batch."""
        if not self._rows:
            return []
        started = time.perf_counter()
        for row in self._rows:
            row.context.append(row.pending)
        tokens = mx.array([row.pending for row in self._rows])  # (B,)
        assert self._cache is not None
        logits = self.paligemma.decode(tokens, self._cache)  # (B, V)
        chosen = self._sample(self._rows, logits)
        spent = time.perf_counter() - started
        advances = []
        for row, (token, prob) in zip(self._rows, chosen, strict=True):
            row.generating_s += spent
            advances.append(self._advance(row, token, prob))
        self._keep([row for row, a in zip(self._rows, advances, strict=True) if a.done is None])
        return advances

    def drop(self, key: Hashable) -> None:
        """Stop a sequence now (its caller is gone); nothing more comes of it."""
        self._keep([row for row in self._rows if row.key != key])

    # -- one step's work -------------------------------------------------------------------
    def _sample(self, rows: list[_Row], logits: mx.array) -> list[tuple[int, float]]:
        """Each row's greedy token and the probability the model gave it, from (B, V) logits.

        A row's processors see its own logits slice and context; the probability is the
        grammar's record of what it was shown (the model's distribution before the grammar's
        mask) or, without one, the processed distribution, as mlx-vlm reports it. Only rows
        without a grammar pay for a log-softmax here (a vocabulary-wide reduction each).
        """
        processed = []
        for index, row in enumerate(rows):
            row_logits = logits[index : index + 1]  # (1, V)
            if row.processors:
                context = mx.array(row.context)
                for processor in row.processors:
                    row_logits = processor(context, row_logits)
            processed.append(row_logits)
        stacked = processed[0] if len(processed) == 1 else mx.concatenate(processed, axis=0)
        tokens = mx.argmax(stacked, axis=-1)  # (B,) greedy: the largest logit
        free = [index for index, row in enumerate(rows) if row.grammar is None]
        logprobs = mx.zeros((0,))
        if free:
            picked = mx.array(free)
            chosen = stacked[picked, tokens[picked]]  # (F,)
            logprobs = chosen - mx.logsumexp(stacked[picked], axis=-1)
        mx.eval(tokens, logprobs)
        token_ids = [int(token) for token in np.asarray(tokens)]
        free_logprobs = dict(zip(free, (float(lp) for lp in np.asarray(logprobs)), strict=True))
        return [
            (
                token,
                math.exp(row.grammar.model_logprob(token) if row.grammar else free_logprobs[index]),
            )
            for index, (row, token) in enumerate(zip(rows, token_ids, strict=True))
        ]

    def _advance(self, row: _Row, token: int, prob: float) -> Advance:
        """Feed the token to its sequence: its pieces, and the record if this token ends it (a
        stop token, or the budget spent)."""
        ended = token in self.paligemma.layout.stop_ids
        pieces: list[Piece] = []
        if not ended:
            row.new_tokens += 1
            pieces = row.pieces.feed(token, prob)
            row.pending = token
            ended = row.new_tokens >= row.budget
        if ended:
            pieces += row.pieces.finish()
        row.texts += [piece.text for piece in pieces]
        if not ended:
            return Advance(row.key, pieces)
        done = Generation(
            text="".join(row.texts),
            prompt_tokens=row.prompt_tokens,
            new_tokens=row.new_tokens,
            timings_ms={**row.timings_ms, "generate": row.generating_s * 1000},
        )
        return Advance(row.key, pieces, done)

    # -- the batch's KV cache ----------------------------------------------------------------
    def _join(self, row: _Row, cache: list[Any]) -> None:
        """The row's own cache (its prompt) becomes the batch's last row, left-padded."""
        from mlx_vlm.models.cache import BatchKVCache

        merged = [BatchKVCache.merge([layer]) for layer in cache]
        if self._cache is None:
            self._cache = merged
        else:
            for batch_layer, row_layer in zip(self._cache, merged, strict=True):
                batch_layer.extend(row_layer)
        self._rows.append(row)

    def _keep(self, rows: list[_Row]) -> None:
        if len(rows) == len(self._rows):
            return
        if not rows:
            self._rows, self._cache = [], None
            return
        indices = mx.array([self._rows.index(row) for row in rows])
        assert self._cache is not None
        for layer in self._cache:
            layer.filter(indices)
        self._rows = rows


@dataclass(frozen=True)
class Generated:
    """A whole generation of one sequence: every piece and the record."""

    pieces: list[Piece]
    record: Generation

    @property
    def text(self) -> str:
        return self.record.text

    @property
    def timings_ms(self) -> dict[str, float]:
        return self.record.timings_ms


def generate(
    paligemma: PaliGemma,
    image: Image.Image,
    prompt: str,
    *,
    max_new_tokens: int,
    logits_processors: Sequence[LogitsProcessor] = (),
    grammar: OutputGrammar | None = None,
) -> Generated:
    """One sequence decoded alone, to its end (warm-up, tests, benchmarks): a batch of one."""
    batch = Batch(paligemma)
    advance = batch.add(
        "alone",
        image,
        prompt,
        max_new_tokens=max_new_tokens,
        processors=logits_processors,
        grammar=grammar,
    )
    pieces = list(advance.pieces)
    while advance.done is None:
        [advance] = batch.step()
        pieces += advance.pieces
    return Generated(pieces, advance.done)
