"""Model output -> objects (label, normalised box, 16 seg codes, score). Pure: no MLX, no I/O.

PaliGemma writes one object as four `<locNNNN>` tokens (y_min, x_min, y_max, x_max on 0..1023),
then, when segmenting, sixteen `<segNNN>` codes, then the label; objects are separated by ` ; `.
Real output is messier (stray text, truncation at the token limit, newlines, `<eos>`), so the
parser is a small state machine that never pairs a box with another object's codes or label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

LOC_TOKENS = 1024
SEG_TOKENS = 128
CODES_PER_MASK = 16

_LOC = re.compile(r"<loc(\d{4})>")
_SEG = re.compile(r"<seg(\d{3})>")
# Splits text into loc/seg tokens, other tags (`<eos>`, `<pad>`), and plain text.
_SPLIT = re.compile(r"(<loc\d{4}>|<seg\d{3}>|<[a-z_]+>)")
_OBJECT_SEPARATORS = re.compile(r";|\n|<eos>|<end_of_turn>")
_OTHER_TAG = re.compile(r"<[a-z_]+>")


@dataclass(frozen=True)
class Piece:
    """One unit of model output: a loc/seg token, or a run of decoded text.

    `prob` is the probability the model gave the token when it was generated (None when parsing
    plain text, where it is unknown).
    """

    text: str
    prob: float | None = None


@dataclass(frozen=True)
class ParsedObject:
    label: str
    loc: tuple[int, int, int, int]  # y_min, x_min, y_max, x_max on 0..1023, as the model wrote them
    codes: tuple[int, ...] | None  # 16 seg codes in 0..127, or None for detection-only output
    score: float | None  # mean probability of the object's loc and seg tokens


@dataclass
class _Draft:
    """An object whose box has been read; codes and label are still arriving."""

    locs: list[tuple[int, float | None]]
    codes: list[tuple[int, float | None]] = field(default_factory=list)
    label: list[str] = field(default_factory=list)

    def has_label(self) -> bool:
        return bool("".join(self.label).strip())

    def finish(self) -> ParsedObject:
        complete_mask = len(self.codes) == CODES_PER_MASK
        scored = self.locs + (self.codes if complete_mask else [])
        probs = [p for _, p in scored]
        score = None if any(p is None for p in probs) else sum(probs) / len(probs)  # type: ignore[arg-type]
        y0, x0, y1, x1 = (v for v, _ in self.locs)
        return ParsedObject(
            label=_clean_label("".join(self.label)),
            loc=(y0, x0, y1, x1),
            codes=tuple(c for c, _ in self.codes) if complete_mask else None,
            score=score,
        )


def _clean_label(text: str) -> str:
    return " ".join(_OTHER_TAG.sub(" ", text).split())


def pieces_from_text(text: str) -> list[Piece]:
    """Split generated text into loc/seg tokens and text runs (no probabilities)."""
    return [Piece(part) for part in _SPLIT.split(text) if part]


def parse_text(text: str) -> list[ParsedObject]:
    """Objects in PaliGemma's detect/segment output text."""
    return parse_pieces(pieces_from_text(text))


def parse_pieces(pieces: Iterable[Piece]) -> list[ParsedObject]:
    """Objects in a stream of pieces; malformed fragments are dropped, never mis-paired."""
    parser = ObjectParser()
    objects = [obj for piece in pieces for obj in parser.feed(piece)]
    return objects + parser.finish()


class ObjectParser:
    """Reads pieces one by one as they are generated: a loc run opens a box, codes and label
    text fill it, a separator or the next box closes it. Text may arrive in any split."""

    def __init__(self) -> None:
        self.objects: list[ParsedObject] = []  # closed, not yet handed out
        self.pending_locs: list[tuple[int, float | None]] = []  # locs not yet claimed by a box
        self.draft: _Draft | None = None

    def feed(self, piece: Piece) -> list[ParsedObject]:
        """The objects this piece completed (usually none)."""
        if (loc := _LOC.fullmatch(piece.text)) and int(loc.group(1)) < LOC_TOKENS:
            self._close()
            self.pending_locs.append((int(loc.group(1)), piece.prob))
        elif (seg := _SEG.fullmatch(piece.text)) and int(seg.group(1)) < SEG_TOKENS:
            self._feed_code(int(seg.group(1)), piece.prob)
        else:
            self._feed_text(piece.text)
        return self._hand_out()

    def finish(self) -> list[ParsedObject]:
        """The objects the end of the output completed."""
        self._open()  # a complete box at the very end, with no label, still counts
        self._close()
        return self._hand_out()

    def _hand_out(self) -> list[ParsedObject]:
        done, self.objects = self.objects, []
        return done

    def _open(self) -> None:
        """Claim the last four pending locs as a box; fewer means a truncated box, dropped."""
        if self.draft is None and len(self.pending_locs) >= 4:
            self.draft = _Draft(locs=self.pending_locs[-4:])
        self.pending_locs = []

    def _close(self) -> None:
        if self.draft is not None:
            self.objects.append(self.draft.finish())
        self.draft = None

    def _feed_code(self, code: int, prob: float | None) -> None:
        self._open()
        if self.draft is None:
            return  # codes without a box belong to no object
        if self.draft.has_label():
            self._close()  # codes after a label are not this object's: drop them
            return
        self.draft.codes.append((code, prob))

    def _feed_text(self, text: str) -> None:
        """Text continues the open object's label, ends it (a separator), or is stray."""
        if not text.strip() and self.draft is None:
            return  # whitespace between loc tokens keeps the run together
        for index, part in enumerate(_OBJECT_SEPARATORS.split(text)):
            if index > 0:
                self._open()
                self._close()
            if part.strip():
                self._open()
            if self.draft is not None:
                self.draft.label.append(part)


def box_to_pixels(loc: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """(y_min, x_min, y_max, x_max) on 0..1023 -> (x_min, y_min, x_max, y_max) pixels, clipped."""
    y0, x0, y1, x1 = loc

    def scale(value: int, size: int) -> int:
        return min(max(int(value / LOC_TOKENS * size + 0.5), 0), size)

    return scale(x0, width), scale(y0, height), scale(x1, width), scale(y1, height)
