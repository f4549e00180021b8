"""What the random-weights demo model writes (`make demo`, checkpoints marked `random_weights`).

Random weights prefer nothing in particular, so left to themselves they would end at once or
ramble. Every code path should still run, so the output grammar writes the answer for them:
one object per class asked, each labelled with its class, with a box big enough to see in a
part of the picture of its own, then the end. The boxes and masks mean nothing; the service
says so wherever it shows them.
"""

from __future__ import annotations

from app.model.grammar import ObjectPolicy

MIN_BOX = 256  # loc units: a quarter of each side, so a demo box and its mask are visible
# Logged once a demo model is in use, wherever it runs: loaded here, or behind a service whose
# /health says `random_weights` (the CLI's --server). %s: the model.
DEMO_WARNING = "DEMO MODEL: %s has random weights; outputs are meaningless"


def demo_objects(classes: int) -> ObjectPolicy:
    """The grammar begins one object per class and ends after the last."""
    return ObjectPolicy(
        start_objects=classes,
        min_box=MIN_BOX,
        model_may_continue=False,
        one_class_each=True,
        cells=classes,  # each object its own part of the picture, so it looks like an answer
    )
