from __future__ import annotations

import pytest

from app.errors import BadInput
from app.prompts import build_prompt


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
