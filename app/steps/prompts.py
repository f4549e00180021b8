"""User prompt -> PaliGemma 2 mix task prompt. Pure."""

from __future__ import annotations

import re

from app.errors import BadInput, InvalidRequest

TASKS = ("segment", "detect")
TOKENS_PER_OBJECT = 24
# The fewest tokens one object can take: 4 locations (+ 16 mask codes) and a one-token label.
MIN_OBJECT_TOKENS = {"segment": 21, "detect": 5}
PARTS = {"segment": "4 locations, 16 mask codes", "detect": "4 locations"}
_CLASS_SEPARATOR = re.compile(r"\s*;\s*")
# U+FFFD is what undecodable bytes become; C0/C1 controls are never part of a prompt. (Starlette
# reads multipart fields that are not UTF-8 as Latin-1, whose 0x80-0x9F bytes land in C1.)
_NOT_TEXT = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def build_prompt(user_prompt: str, *, max_chars: int) -> str:
    """`cat ; dog` -> `segment cat ; dog`; `detect car` is kept. Classes are joined by ` ; `.

    PaliGemma 2 mix was trained on exactly this spelling, so stray spaces and empty classes are
    normalised away rather than passed through.
    """
    if _NOT_TEXT.search(user_prompt):
        raise BadInput(
            "prompt is not valid text: send it as UTF-8 (it held undecodable bytes or control "
            "characters)."
        )
    text = " ".join(user_prompt.split())
    if not text:
        raise BadInput("prompt is empty; say what to segment, e.g. 'cat' or 'cat ; dog'.")
    if len(user_prompt) > max_chars:
        raise BadInput(
            f"prompt is {len(user_prompt)} characters; the limit is {max_chars}. Shorten it."
        )
    task, _, rest = text.partition(" ")
    if task.lower() in TASKS:
        task = task.lower()
    else:
        task, rest = "segment", text
    classes = [c for c in _CLASS_SEPARATOR.split(rest) if c]
    if not classes:
        raise BadInput(f"prompt '{text}' names nothing to {task}; e.g. '{task} cat'.")
    return f"{task} {' ; '.join(classes)}"


def split_task_prompt(task_prompt: str) -> tuple[str, list[str]]:
    """`segment cat ; dog` (as `build_prompt` writes it) -> ("segment", ["cat", "dog"])."""
    task, _, rest = task_prompt.partition(" ")
    return task, rest.split(" ; ")


def token_budget(task_prompt: str, *, max_objects_per_class: int, ceiling: int) -> int:
    """New tokens a prompt can need: ~24 per object (4 loc + 16 seg + label + separator).

    Greedy decoding stops at end-of-sequence on its own; this only bounds a runaway output.
    """
    classes = len(split_task_prompt(task_prompt)[1])
    return min(ceiling, classes * max_objects_per_class * TOKENS_PER_OBJECT)


def check_token_cap(task_prompt: str, max_new_tokens: int | None) -> None:
    """Refuse a cap that cannot hold one object: the answer would be empty, silently."""
    task = split_task_prompt(task_prompt)[0]
    least = MIN_OBJECT_TOKENS[task]
    if max_new_tokens is not None and max_new_tokens < least:
        raise InvalidRequest(
            f"max_new_tokens={max_new_tokens} cannot hold one object: a {task} object takes "
            f"at least {least} tokens ({PARTS[task]} and a label). Give about "
            f"{TOKENS_PER_OBJECT} per object wanted, or leave it out for a budget from the "
            "classes asked."
        )
