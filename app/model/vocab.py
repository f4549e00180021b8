"""What a checkpoint's tokenizer holds, read once at load: loc/seg id ranges and token bytes.

Pure Python over the tokenizer's own tables (no MLX): the real vocabulary has 257k ids, so the
maps the output grammar needs per token are built once per model, never per request.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.steps.tokens import LOC_TOKENS, SEG_TOKENS

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback
_TAG_PIECE = re.compile(r"<[^<>\s]+>")  # <unused12>, <start_of_image>: never label text
SPACE_PIECE = "▁"  # SentencePiece's space


@dataclass(frozen=True)
class TokenLayout:
    """Where the loc/seg tokens sit in this checkpoint's vocabulary (read, never assumed)."""

    loc_base: int
    seg_base: int
    stop_ids: frozenset[int]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, stop_ids: Sequence[int]) -> TokenLayout:
        ids = tokenizer.convert_tokens_to_ids(
            ["<loc0000>", f"<loc{LOC_TOKENS - 1:04d}>", "<seg000>", f"<seg{SEG_TOKENS - 1:03d}>"]
        )
        loc_first, loc_last, seg_first, seg_last = ids
        if loc_last - loc_first != LOC_TOKENS - 1 or seg_last - seg_first != SEG_TOKENS - 1:
            raise ValueError(
                "This tokenizer's <locNNNN>/<segNNN> tokens are missing or not contiguous; it is "
                "not a PaliGemma tokenizer."
            )
        return cls(loc_base=loc_first, seg_base=seg_first, stop_ids=frozenset(stop_ids))

    def loc_value(self, token_id: int) -> int | None:
        """0..1023 for a `<locNNNN>` id, else None."""
        value = token_id - self.loc_base
        return value if 0 <= value < LOC_TOKENS else None

    def seg_value(self, token_id: int) -> int | None:
        """0..127 for a `<segNNN>` id, else None."""
        value = token_id - self.seg_base
        return value if 0 <= value < SEG_TOKENS else None

    def special_piece(self, token_id: int) -> str | None:
        """`<locNNNN>` / `<segNNN>` for those ids, None for ordinary text tokens."""
        if (loc := self.loc_value(token_id)) is not None:
            return f"<loc{loc:04d}>"
        if (seg := self.seg_value(token_id)) is not None:
            return f"<seg{seg:03d}>"
        return None


@dataclass(frozen=True)
class Vocabulary:
    """The layout plus every text token's UTF-8 bytes, indexed both ways.

    Labels are matched byte by byte, so any split of a label into tokens (the canonical one,
    another merge order, byte fallback for rare characters) is accepted alike.
    """

    layout: TokenLayout
    bytes_of: dict[int, bytes]  # text token id -> the bytes it spells (spaces as b" ")
    ids_of: dict[bytes, tuple[int, ...]]  # the inverse: every id spelling exactly those bytes

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, layout: TokenLayout) -> Vocabulary:
        special = set(tokenizer.all_special_ids) | set(layout.stop_ids)
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        bytes_of: dict[int, bytes] = {}
        for token_id, piece in enumerate(pieces):
            if piece is None or token_id in special or layout.special_piece(token_id):
                continue
            spelled = piece_bytes(piece)
            if spelled:
                bytes_of[token_id] = spelled
        ids_of: defaultdict[bytes, list[int]] = defaultdict(list)
        for token_id, spelled in bytes_of.items():
            ids_of[spelled].append(token_id)
        return cls(layout, bytes_of, {k: tuple(v) for k, v in ids_of.items()})

    def ids_spelling_a_prefix_of(self, rest: bytes) -> set[int]:
        """Ids whose bytes are a non-empty prefix of `rest` (labels are short: a few lookups)."""
        found: set[int] = set()
        for end in range(1, len(rest) + 1):
            found.update(self.ids_of.get(rest[:end], ()))
        return found


def piece_bytes(piece: str) -> bytes:
    """A SentencePiece piece as the bytes it decodes to; b"" for tags that are never text."""
    if byte := _BYTE_PIECE.fullmatch(piece):
        return bytes([int(byte.group(1), 16)])
    if _TAG_PIECE.fullmatch(piece):
        return b""
    return piece.replace(SPACE_PIECE, " ").encode("utf-8")
