"""Constrained decoding: greedy generation kept inside PaliGemma's detect/segment output grammar.

    output := object (" ; " object)* <eos>       object := <loc>x4 [<seg>x16] label
    label  := one of the prompt's classes, with or without a leading space

A logits processor (mlx-vlm calls it before every sampling step) masks every token the grammar
does not allow next. By default it only completes what the model began: at an object boundary
it ends the output unless the model's own most likely token is a `<loc>`, so it never invents
an object a real model did not start. On output that is already well-formed it changes no token. An
`ObjectPolicy` can have the grammar begin objects itself; the random-weights demo model's
policy (app/model/demo.py, chosen by the runner) is the one that does.

It also keeps each step's unconstrained log-probabilities, so a score reflects what the model
believed, and a forced token shows as low confidence.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from app.model.vocab import Vocabulary
from app.steps.tokens import CODES_PER_MASK, LOC_TOKENS, SEG_TOKENS

LABEL_PREFIXES = (b" ", b"")  # PaliGemma writes " cat" after the codes; tolerate "cat"
SEPARATORS = (b" ; ", b"; ")  # big_vision writes " ; "; its own parser also reads "; "


@dataclass(frozen=True)
class ObjectPolicy:
    """Who decides how many objects there are and what each is called."""

    start_objects: int = 0  # objects the grammar begins whatever the model prefers
    min_box: int = 1  # smallest y_max - y_min and x_max - x_min, in loc units
    model_may_continue: bool = True  # past those, the model's own top token may begin another
    one_class_each: bool = False  # object i is labelled with class i (cycling), else any class
    # The objects the grammar begins get one cell each of a grid of this many (0: anywhere),
    # so they do not all land on the same box.
    cells: int = 0


FOLLOW_THE_MODEL = ObjectPolicy()  # a real model: the grammar only completes what it began


class Phase(enum.Enum):
    BOUNDARY = "boundary"  # before an object: its first <loc>, or the end
    LOCS = "locs"
    CODES = "codes"
    TEXT = "text"  # the label, then a separator or the end
    DONE = "done"
    FREE = "free"  # a token arrived the grammar did not allow: stop constraining


class OutputGrammar:
    """One request's constraint; call order is mlx-vlm's: one call per sampling step."""

    def __init__(
        self,
        vocabulary: Vocabulary,
        *,
        task: str,
        classes: list[str],
        policy: ObjectPolicy = FOLLOW_THE_MODEL,
    ) -> None:
        self.vocabulary = vocabulary
        self.layout = vocabulary.layout
        self.codes_per_object = CODES_PER_MASK if task == "segment" else 0
        self.classes = [c.encode("utf-8") for c in classes]
        self.policy = policy
        self.start_objects = policy.start_objects
        self.min_box = policy.min_box
        self.phase = Phase.BOUNDARY
        self.locs: list[int] = []
        self.codes = 0
        self.text = b""
        self.objects = 0  # objects begun
        # Per step, before the constraint: (logits (1, V), their logsumexp (1,)).
        self.model_logprobs: deque[tuple[mx.array, mx.array]] = deque()
        self._steps = 0
        self._positions: mx.array | None = None

    # -- the logits processor ---------------------------------------------------------------
    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        """`logits` (1, V) for the next token; `tokens` ends with the token chosen last step."""
        if self._steps > 0:
            self.advance(_scalar(tokens[-1]))
        self._steps += 1
        # Lazy, and only the chosen token's value is ever read: no full log-softmax here.
        self.model_logprobs.append((logits, mx.logsumexp(logits, axis=-1)))
        allowed = self.allowed(logits)
        if allowed is None:
            return logits
        return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))

    def model_logprob(self, token: int) -> float:
        """The model's own log-probability of the token just sampled (oldest step first)."""
        logits, log_total = self.model_logprobs.popleft()
        return float(np.asarray(logits[0, token] - log_total[0]))

    # -- the grammar ------------------------------------------------------------------------
    def advance(self, token: int) -> None:
        """Move past the token sampled last step."""
        if self.phase in (Phase.DONE, Phase.FREE):
            return
        if token in self.layout.stop_ids:
            self.phase = Phase.DONE
        elif self.phase in (Phase.BOUNDARY, Phase.LOCS):
            self._advance_loc(token)
        elif self.phase is Phase.CODES:
            self._advance_code(token)
        else:
            self._advance_text(token)

    def _advance_loc(self, token: int) -> None:
        value = self.layout.loc_value(token)
        if value is None:
            self.phase = Phase.FREE
            return
        if self.phase is Phase.BOUNDARY:
            self.objects += 1
            self.phase, self.locs = Phase.LOCS, []
        self.locs.append(value)
        if len(self.locs) == 4:
            self.codes, self.text = 0, b""
            self.phase = Phase.CODES if self.codes_per_object else Phase.TEXT

    def _advance_code(self, token: int) -> None:
        if self.layout.seg_value(token) is None:
            self.phase = Phase.FREE
            return
        self.codes += 1
        if self.codes == self.codes_per_object:
            self.phase = Phase.TEXT

    def _advance_text(self, token: int) -> None:
        self.text += self.vocabulary.bytes_of.get(token, b"\x00")
        ends, objects_end = self._label_texts()
        if not any(t.startswith(self.text) for t in ends | objects_end):
            self.phase = Phase.FREE
        elif self.text in objects_end:
            self.phase = Phase.BOUNDARY

    def allowed(self, logits: mx.array) -> mx.array | None:
        """Bool (V,) of the tokens allowed next; None when anything goes."""
        if self.phase is Phase.FREE:
            return None
        if self.phase is Phase.BOUNDARY:
            if self.objects < self.start_objects or (
                self.policy.model_may_continue and self._model_starts_object(logits)
            ):
                return self._loc_range(*self._loc_bounds(self.objects, 0), logits)
            return self._ids(self.layout.stop_ids, logits)
        if self.phase is Phase.LOCS:
            return self._loc_range(*self._loc_bounds(self.objects - 1, len(self.locs)), logits)
        if self.phase is Phase.CODES:
            base = self.layout.seg_base
            return self._range(base, base + SEG_TOKENS - 1, logits)
        if self.phase is Phase.TEXT:
            return self._ids(self._text_continuations(), logits)
        return self._ids(self.layout.stop_ids, logits)  # DONE

    def _loc_bounds(self, index: int, coordinate: int) -> tuple[int, int]:
        """The values object `index`'s `coordinate` (0 y_min, 1 x_min, 2 y_max, 3 x_max) may
        take: the whole image, or its cell; a max beyond its min by the minimum size."""
        first, last, min_box = 0, LOC_TOKENS - 1, self.min_box
        if self.policy.cells and index < self.start_objects:
            columns = math.ceil(math.sqrt(self.policy.cells))
            rows = math.ceil(self.policy.cells / columns)
            row, column = divmod(index % (rows * columns), columns)
            parts, at = (rows, row) if coordinate % 2 == 0 else (columns, column)
            first, last = at * LOC_TOKENS // parts, (at + 1) * LOC_TOKENS // parts - 1
            min_box = min(min_box, (last - first + 1) // 2)  # a small cell still holds a box
        if coordinate < 2:
            return first, last - min_box
        return self.locs[coordinate - 2] + min_box, last

    def _label_texts(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """The current object's label texts that may end the output, and those that go on to
        the next object. With one class each, object i gets class i, and after the objects the
        policy begins, nothing but the end."""
        classes: list[bytes] = self.classes
        separators: tuple[bytes, ...] = SEPARATORS
        if self.policy.one_class_each:
            classes = [classes[(self.objects - 1) % len(classes)]]
            separators = SEPARATORS if self.objects < self.start_objects else ()
        labels = {prefix + c for c in classes for prefix in LABEL_PREFIXES}
        return frozenset(labels), frozenset(label + s for label in labels for s in separators)

    def _model_starts_object(self, logits: mx.array) -> bool:
        return self.layout.loc_value(_scalar(mx.argmax(logits, axis=-1))) is not None

    def _text_continuations(self) -> set[int]:
        found: set[int] = set()
        ends, objects_end = self._label_texts()
        for target in ends | objects_end:
            if len(target) > len(self.text) and target.startswith(self.text):
                found |= self.vocabulary.ids_spelling_a_prefix_of(target[len(self.text) :])
        if self.text in ends and self.objects >= self.start_objects:
            found |= self.layout.stop_ids
        return found or set(self.layout.stop_ids)  # a label no token can spell: end, never NaN

    # -- masks ------------------------------------------------------------------------------
    def _loc_range(self, low: int, high: int, logits: mx.array) -> mx.array:
        base = self.layout.loc_base
        return self._range(base + low, base + high, logits)

    def _range(self, first: int, last: int, logits: mx.array) -> mx.array:
        positions = self._arange(logits.shape[-1])
        return mx.logical_and(positions >= first, positions <= last)

    def _ids(self, ids: set[int] | frozenset[int], logits: mx.array) -> mx.array:
        allowed = np.zeros(logits.shape[-1], dtype=bool)
        allowed[[i for i in ids if i < allowed.size]] = True
        return mx.array(allowed)

    def _arange(self, size: int) -> mx.array:
        if self._positions is None or self._positions.shape[0] != size:
            self._positions = mx.arange(size)
        return self._positions


def _scalar(value: mx.array) -> int:
    """One integer out of a one-element array (this evaluates it)."""
    return int(np.asarray(value).reshape(-1)[0])
