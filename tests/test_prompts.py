from __future__ import annotations

import pytest

from app.errors import BadInput, InvalidRequest
from app.steps.prompts import build_prompt, check_token_cap, token_budget


@pytest.mark.parametrize(
    ("user", "task"),
    [
        ("cat", "segment cat"),
        ("  cat  ", "segment cat"),
        ("cat;dog", "segment cat ; dog"),
        ("left wheel ;  tyre ;", "segment left wheel ; tyre"),
        ("segment cat", "segment cat"),
        ("Segment cat ; dog", "segment cat ; dog"),
        ("detect car", "detect car"),
        ("DETECT car;bus", "detect car ; bus"),
        ("segmentation", "segment segmentation"),
    ],
)
def test_build_prompt(user: str, task: str) -> None:
    assert build_prompt(user, max_chars=512) == task


@pytest.mark.parametrize("user", ["", "   ", "\n\t", " ; ; ", "segment", "detect ;"])
def test_prompts_naming_nothing_are_refused(user: str) -> None:
    with pytest.raises(BadInput):
        build_prompt(user, max_chars=512)


def test_prompt_over_the_limit_is_refused_with_the_limit() -> None:
    with pytest.raises(BadInput, match="limit is 10"):
        build_prompt("c" * 11, max_chars=10)


@pytest.mark.parametrize(
    ("prompt", "budget"),
    [("segment cat", 48), ("segment cat ; dog", 96), ("detect a ; b ; c ; d ; e ; f", 100)],
)
def test_token_budget_grows_with_the_classes_asked_for(prompt: str, budget: int) -> None:
    assert token_budget(prompt, max_objects_per_class=2, ceiling=100) == budget


@pytest.mark.parametrize(
    ("prompt", "cap", "refused"),
    [
        ("segment cat", 1, True),
        ("segment cat", 20, True),
        ("segment cat", 21, False),
        ("detect cat", 4, True),
        ("detect cat", 5, False),
        ("segment cat", None, False),
    ],
)
def test_a_token_cap_that_cannot_hold_one_object_is_refused(
    prompt: str, cap: int | None, refused: bool
) -> None:
    if not refused:
        check_token_cap(prompt, cap)
        return
    with pytest.raises(InvalidRequest, match=f"max_new_tokens={cap} cannot hold one object"):
        check_token_cap(prompt, cap)
