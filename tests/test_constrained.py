"""Constrained decoding keeps output inside the detect/segment grammar, and only completes it.

Unit tests drive `OutputGrammar` with hand-made logits on the tiny tokenizer; end-to-end tests
run the tiny model's real generation with and without the grammar.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from app.model.demo import MIN_BOX, demo_objects
from app.model.generation import generate
from app.model.grammar import OutputGrammar
from app.model.messages import DecodedObject, ModelOutput, ModelRequest
from app.model.paligemma import PaliGemma
from app.model.runner import Runner
from app.model.vocab import TokenLayout, Vocabulary
from app.steps.prompts import split_task_prompt
from app.steps.tokens import parse_text
from scripts.harness import tiny_settings
from scripts.scripted_output import ScriptedOutput


def locs(*values: int) -> str:
    return "".join(f"<loc{v:04d}>" for v in values)


def segs(*codes: int) -> str:
    return "".join(f"<seg{c:03d}>" for c in codes)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def vocabulary(tokenizer) -> Vocabulary:  # type: ignore[no-untyped-def]
    layout = TokenLayout.from_tokenizer(tokenizer, [tokenizer.eos_token_id])
    return Vocabulary.from_tokenizer(tokenizer, layout)


def drive(
    grammar: OutputGrammar, prefers: Callable[[int], int], vocab_size: int, steps: int = 80
) -> list[int]:
    """Greedy decoding of a 'model' whose favourite token at step i is `prefers(i)`."""
    tokens, chosen = [2], []  # <bos>
    for step in range(steps):
        logits = np.zeros((1, vocab_size), dtype=np.float32)
        logits[0, prefers(step)] = 10.0
        constrained = grammar(mx.array(tokens), mx.array(logits))
        choice = int(mx.argmax(constrained, axis=-1).item())
        chosen.append(choice)
        tokens.append(choice)
        if choice in grammar.layout.stop_ids:
            break
    return chosen


def wants(tokenizer, text: str) -> Callable[[int], int]:  # type: ignore[no-untyped-def]
    ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
    return lambda step: ids[min(step, len(ids) - 1)]


def decoded(tokenizer, ids: list[int]) -> str:  # type: ignore[no-untyped-def]
    return str(tokenizer.decode(ids, skip_special_tokens=True))


WELL_FORMED = [
    ("segment", ["cat", "dog"], locs(100, 200, 600, 700) + segs(*range(16)) + " cat"),
    (
        "segment",
        ["cat", "dog"],
        locs(1, 2, 3, 4)
        + segs(*range(16))
        + " dog ; "
        + locs(5, 6, 900, 800)
        + segs(*[7] * 16)
        + " cat",
    ),
    (
        "detect",
        ["left wheel", "car"],
        locs(10, 20, 30, 40) + " left wheel ; " + locs(0, 0, 1023, 1023) + " car",
    ),
]


@pytest.mark.parametrize(("task", "classes", "text"), WELL_FORMED)
def test_well_formed_output_is_never_changed(
    tokenizer, vocabulary: Vocabulary, task: str, classes: list[str], text: str
) -> None:  # type: ignore[no-untyped-def]
    grammar = OutputGrammar(vocabulary, task=task, classes=classes)
    ids = drive(grammar, wants(tokenizer, text), len(tokenizer))
    assert ids == [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]


def test_a_label_spelled_with_other_tokens_is_accepted(tokenizer, vocabulary) -> None:  # type: ignore[no-untyped-def]
    """Byte-level matching: '▁c' 'a' 't' is as good as '▁cat'."""
    pieces = ["▁c", "a", "t"]
    split = [tokenizer.convert_tokens_to_ids(p) for p in pieces]
    head = tokenizer.encode(locs(1, 2, 3, 4) + segs(*range(16)), add_special_tokens=False)
    ids = [*head, *split, tokenizer.eos_token_id]
    grammar = OutputGrammar(vocabulary, task="segment", classes=["cat"])
    assert drive(grammar, lambda i: ids[min(i, len(ids) - 1)], len(tokenizer)) == ids


def test_no_object_is_invented_when_the_model_does_not_start_one(tokenizer, vocabulary) -> None:  # type: ignore[no-untyped-def]
    grammar = OutputGrammar(vocabulary, task="segment", classes=["cat"])
    word = tokenizer.convert_tokens_to_ids("▁the")
    assert drive(grammar, lambda _: word, len(tokenizer)) == [tokenizer.eos_token_id]


def test_a_begun_object_is_completed_into_the_grammar(tokenizer, vocabulary) -> None:  # type: ignore[no-untyped-def]
    """The model starts a box and then rambles: codes, a prompt class and the end follow."""
    text = locs(100, 100, 400, 500) + " the the the the"
    grammar = OutputGrammar(vocabulary, task="segment", classes=["left wheel", "dog"])
    ids = drive(grammar, wants(tokenizer, text), len(tokenizer))
    [obj] = parse_text(decoded(tokenizer, ids))
    assert obj.loc == (100, 100, 400, 500) and obj.codes is not None and len(obj.codes) == 16
    assert obj.label in ("left wheel", "dog")
    assert ids[-1] == tokenizer.eos_token_id


def test_end_only_at_an_object_boundary_and_boxes_are_not_empty(tokenizer, vocabulary) -> None:  # type: ignore[no-untyped-def]
    """A model that wants to stop at once, after its first <loc>, still finishes the object;
    its y_max and x_max come after y_min and x_min."""
    first = tokenizer.convert_tokens_to_ids("<loc0700>")
    eos = tokenizer.eos_token_id
    grammar = OutputGrammar(vocabulary, task="detect", classes=["car"])
    ids = drive(grammar, lambda step: first if step == 0 else eos, len(tokenizer))
    [obj] = parse_text(decoded(tokenizer, ids))
    y0, x0, y1, x1 = obj.loc
    assert y0 == 700 and y1 > y0 and x1 > x0 and obj.label == "car"


def test_random_weights_write_one_object_per_class(tokenizer, vocabulary) -> None:  # type: ignore[no-untyped-def]
    word = tokenizer.convert_tokens_to_ids("▁the")
    grammar = OutputGrammar(
        vocabulary, task="segment", classes=["cat", "dog"], policy=demo_objects(2)
    )
    objects = parse_text(decoded(tokenizer, drive(grammar, lambda _: word, len(tokenizer), 120)))
    assert len(objects) == 2
    for obj in objects:
        y0, x0, y1, x1 = obj.loc
        assert y1 - y0 >= MIN_BOX and x1 - x0 >= MIN_BOX
        assert obj.codes is not None and obj.label in ("cat", "dog")
    # Each in a part of the picture of its own: the answer looks like one, not one box twice.
    left, right = (o.loc for o in objects)
    assert left[3] < right[1]  # x_max of the first before x_min of the second


@pytest.mark.parametrize("classes", [1, 3, 5, 9, 12])
def test_random_weights_give_each_object_its_own_box(tokenizer, vocabulary, classes) -> None:  # type: ignore[no-untyped-def]
    names = [
        "cat",
        "dog",
        "car",
        "tree",
        "sky",
        "road",
        "door",
        "hand",
        "face",
        "cup",
        "book",
        "man",
    ]
    word = tokenizer.convert_tokens_to_ids("▁the")
    grammar = OutputGrammar(
        vocabulary, task="detect", classes=names[:classes], policy=demo_objects(classes)
    )
    steps = 20 * classes + 10
    objects = parse_text(decoded(tokenizer, drive(grammar, lambda _: word, len(tokenizer), steps)))
    assert [o.label for o in objects] == names[:classes]
    boxes = [o.loc for o in objects]
    assert len(set(boxes)) == classes
    for (ay0, ax0, ay1, ax1), (by0, bx0, by1, bx1) in itertools.combinations(boxes, 2):
        assert ay1 < by0 or by1 < ay0 or ax1 < bx0 or bx1 < ax0  # never overlapping
    for y0, x0, y1, x1 in boxes:
        assert y1 - y0 >= 64 and x1 - x0 >= 64  # visible even in a 4x4 grid


# -- the real generation on the tiny model ------------------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> PaliGemma:
    return PaliGemma.load(tiny_model_dir)


def noise(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))


@pytest.mark.parametrize(("task", "classes", "text"), WELL_FORMED)
def test_forced_valid_output_gives_identical_ids_with_and_without_the_grammar(
    model: PaliGemma, tokenizer, task: str, classes: list[str], text: str
) -> None:  # type: ignore[no-untyped-def]
    script = ScriptedOutput(tokenizer, text)
    prompt = f"{task} {' ; '.join(classes)}"
    free = generate(
        model, noise(0), prompt, max_new_tokens=60, logits_processors=script.processors()
    )
    grammar = OutputGrammar(model.vocabulary, task=task, classes=classes)
    constrained = generate(
        model,
        noise(0),
        prompt,
        max_new_tokens=60,
        logits_processors=script.processors(),
        grammar=grammar,
    )
    assert constrained.text == free.text == text
    # Scores come from the model's own distribution (here the scripted one), not the grammar's.
    assert [p.prob for p in constrained.pieces] == pytest.approx([p.prob for p in free.pieces])


def run(runner: Runner, image: Image.Image, prompt: str) -> tuple[list[DecodedObject], str]:
    """A request's objects and its text, straight from the runner (a batch of one, no worker)."""
    events = runner.start("one", ModelRequest(image, prompt, 200, runner.name))
    while not events or not isinstance(events[-1][1], ModelOutput):
        events += runner.step()
    *objects, output = [event for _, event in events]
    assert isinstance(output, ModelOutput)
    return [o for o in objects if isinstance(o, DecodedObject)], output.text


def load_runner(tiny_model_dir: Path, **settings: object) -> Runner:
    return Runner.load(
        "tiny",
        tiny_model_dir,
        tiny_settings(tiny_model_dir, warmup=False, **settings),
        random_weights=True,
    )


def test_random_model_always_gives_a_well_formed_object(tiny_model_dir: Path) -> None:
    runner = load_runner(tiny_model_dir)
    for seed, prompt in enumerate(["segment cat", "segment left wheel ; dog", "detect car"]):
        task, classes = split_task_prompt(prompt)
        objects, text = run(runner, noise(seed), prompt)
        assert len(objects) == len(classes), text  # one per class, then the end
        for obj in objects:
            assert obj.label in classes
            assert (obj.raw_mask is not None) == (task == "segment")
            # Forced tokens: the random model itself gave them almost no probability.
            assert obj.score is not None and obj.score < 0.05


def test_constraining_can_be_turned_off(tiny_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """SEGMENT_CONSTRAINED=false: the model's own words stand. A box without codes in a segment
    answer is off-grammar: constrained, it gets codes (a mask); unconstrained, it stays a box."""
    box_only = locs(100, 200, 600, 700) + " cat"
    script = ScriptedOutput(tokenizer, box_only)
    answers = {}
    for constrained in (True, False):
        runner = Runner.load(
            "tiny",
            tiny_model_dir,
            tiny_settings(tiny_model_dir, warmup=False, constrained=constrained),
            random_weights=True,
            logits_processors=script.processors,
        )
        answers[constrained] = run(runner, noise(0), "segment cat")
    objects, text = answers[False]
    assert text == box_only
    assert [o.label for o in objects] == ["cat"] and objects[0].raw_mask is None
    objects, text = answers[True]  # the same model, the same wishes, the grammar on
    assert text != box_only and len(objects) == 1 and objects[0].raw_mask is not None, text
