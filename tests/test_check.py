"""`make check` (`python -m scripts.check_model`): the verdict, the speed figures, the missing
weights, and whole runs on the tiny random model (whose answer must fail the verdict)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.config import Settings
from app.steps.objects import SegmentedObject
from scripts.check.speed import describe, speed
from scripts.check.verdict import MAX_SHARE, MIN_SHARE, Box, Expected, box_iou, judge
from scripts.check_model import (
    EXIT_FAIL,
    EXIT_NO_WEIGHTS,
    LABEL,
    missing_weights,
    run_check,
    verdict_line,
)
from scripts.harness import ROOT, tiny_settings

LABELLED: Box = (100, 50, 300, 450)
SIZE = (512, 512)  # width, height
# The line's figures, each a number (never "n/a" when the request ran).
FIGURES = re.compile(
    r"\| device \S.* \| model \S.* \| prefill [\d.]+ tok/s \(\d+ tokens\) \| vision [\d.]+ ms "
    r"\| decode [\d.]+ tok/s \(\d+ tokens\) \| [\d.]+ ms per object \(\d+ found\) "
    r"\| total [\d.]+ ms$"
)


def found(box: Box, fill: float | None = 0.7, outside: int = 0) -> SegmentedObject:
    """An object with its mask covering `fill` of its box (rows from the top), plus `outside`
    rows of 50 pixels set at the image's top-left corner, outside the box."""
    mask = None
    if fill is not None:
        mask = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
        x0, y0, x1, y1 = box
        mask[y0 : y0 + round((y1 - y0) * fill), x0:x1] = True
        mask[:outside, :50] = True
    area = int(mask.sum()) if mask is not None else 0
    return SegmentedObject(label="person", box=box, mask=mask, score=0.9, area=area)


# -- the verdict ---------------------------------------------------------------------------
def test_box_iou_of_known_boxes() -> None:
    assert box_iou(LABELLED, LABELLED) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_the_right_object_in_the_right_place_passes() -> None:
    near = (110, 60, 310, 440)  # a few pixels off on every side
    verdict = judge([found((400, 400, 500, 500)), found(near)], LABELLED)
    assert verdict.passed, verdict.reason
    assert verdict.iou == pytest.approx(box_iou(near, LABELLED))
    assert verdict.share == pytest.approx(0.7, abs=0.01)
    assert verdict.reason == f"found at box IoU {verdict.iou:.2f}, mask 70% of its box"


def test_nothing_found_fails() -> None:
    verdict = judge([], LABELLED)
    assert not verdict.passed and verdict.reason == "no object found"


def test_an_object_elsewhere_fails_with_its_iou() -> None:
    verdict = judge([found((0, 0, 120, 120)), found((250, 300, 500, 512))], LABELLED)
    assert not verdict.passed
    assert verdict.iou is not None and verdict.iou < 0.5
    assert verdict.reason == f"wrong place: box IoU {verdict.iou:.2f} < 0.50"


def test_an_object_without_a_mask_fails() -> None:
    for obj in (found(LABELLED, fill=None), found(LABELLED, fill=0.0)):
        verdict = judge([obj], LABELLED)
        assert not verdict.passed and verdict.reason == "no mask for the object found"


def test_a_mask_outside_its_box_fails() -> None:
    verdict = judge([found(LABELLED, fill=0.5, outside=20)], LABELLED)
    assert not verdict.passed
    assert verdict.reason == "mask outside its box: 2% of its pixels"  # 1000 of 41000
    assert judge([found(LABELLED, fill=0.5, outside=4)], LABELLED).passed  # 0.5 %: tolerated


def test_a_mask_covering_too_little_or_too_much_fails() -> None:
    little = judge([found(LABELLED, fill=MIN_SHARE - 0.05)], LABELLED)
    assert not little.passed
    assert little.reason == "mask covers too little of its box: 15% < 20%"
    much = judge([found(LABELLED, fill=1.0)], LABELLED)
    assert not much.passed
    assert much.reason == "mask covers too much of its box: 100% > 95%"
    assert judge([found(LABELLED, fill=MAX_SHARE - 0.01)], LABELLED).passed


def test_the_bundled_label_fits_its_photo() -> None:
    expected = Expected.load(LABEL)
    with Image.open(expected.image) as image:
        width, height = image.size
    x0, y0, x1, y1 = expected.box
    assert expected.prompt == "person"
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert expected.image.stat().st_size < 200_000
    assert (LABEL.parent / "README.md").read_text().count("public domain") >= 1


# -- the speed figures ---------------------------------------------------------------------
def test_speed_figures_from_known_timings() -> None:
    timings = {"vision": 95.0, "prefill": 500.0, "generate": 400.0, "decode_masks": 20.0}
    figures = speed({**timings, "total": 1100.0}, prompt_tokens=1030, new_tokens=44, objects=2)
    assert figures.prefill_tps == pytest.approx(2060.0)  # 1030 tokens in 0.5 s
    assert figures.decode_tps == pytest.approx(110.0)  # 44 tokens in 0.4 s
    assert figures.per_object_ms == pytest.approx(210.0)  # (400 + 20) ms / 2
    assert describe(figures) == [
        "prefill 2060 tok/s (1030 tokens)",
        "vision 95 ms",
        "decode 110 tok/s (44 tokens)",
        "210 ms per object (2 found)",
        "total 1100 ms",
    ]


def test_speed_figures_say_na_for_what_is_not_known() -> None:
    figures = speed({"prefill": 0.0}, prompt_tokens=None, new_tokens=3, objects=0)
    assert figures.prefill_tps is None and figures.decode_tps is None
    assert figures.per_object_ms is None  # nothing found: no time per object
    assert describe(figures)[0] == "prefill n/a tok/s (n/a tokens)"
    assert describe(figures)[3] == "n/a ms per object (0 found)"


def test_verdict_line_is_one_line_with_every_figure() -> None:
    figures = speed({"vision": 1, "prefill": 2, "generate": 3, "total": 9}, 10, 6, 1)
    line = verdict_line("person", judge([], LABELLED), "gpu (metal, Apple M2)", "m/x", figures)
    assert "\n" not in line
    assert line.startswith("check FAIL: person: no object found | device gpu (metal, Apple M2) ")
    assert FIGURES.search(line), line


# -- no weights ------------------------------------------------------------------------------
def test_missing_weights_say_how_to_get_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        model=str(tmp_path / "absent"), vae_path=tmp_path / "vae-oid.npz", models_dir=tmp_path
    )
    assert run_check(settings, Expected.load(LABEL)) == EXIT_NO_WEIGHTS
    out = capsys.readouterr()
    assert out.out == ""  # no verdict line: nothing was checked
    assert out.err.startswith("check: no weights to check: The model ")
    assert "make models" in out.err


def test_a_missing_mask_decoder_counts_as_missing_weights(tiny_model_dir: Path) -> None:
    settings = Settings(model=str(tiny_model_dir), vae_path=tiny_model_dir / "absent.npz")
    problem = missing_weights(settings)
    assert problem is not None and "absent.npz" in problem and "make models" in problem
    assert missing_weights(tiny_settings(tiny_model_dir)) is None


# -- whole runs on the tiny random model -------------------------------------------------------
def test_check_on_the_tiny_model_prints_a_failing_verdict_with_its_figures(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_check(tiny_settings(tiny_model_dir), Expected.load(LABEL))
    lines = capsys.readouterr().out.splitlines()
    assert status == EXIT_FAIL, lines
    [line] = lines
    assert line.startswith("check FAIL: person: "), line
    assert "(RANDOM WEIGHTS)" in line
    assert FIGURES.search(line), line


def test_the_token_counts_are_the_engines_own(tiny_model_dir: Path) -> None:
    """The speeds divide the counts the engine kept (carried to the result), not a recount."""
    from app.model.demo import demo_objects
    from app.model.generation import generate
    from app.model.grammar import OutputGrammar
    from app.model.paligemma import PaliGemma
    from app.segmenter import Segmenter

    image = Image.open(Expected.load(LABEL).image)
    with Segmenter.load(tiny_settings(tiny_model_dir, warmup=False)) as segmenter:
        result = segmenter.segment(image, "person")
    model = PaliGemma.load(tiny_model_dir)
    grammar = OutputGrammar(
        model.vocabulary, task="segment", classes=["person"], policy=demo_objects(1)
    )
    done = generate(
        model, image.convert("RGB"), "segment person", max_new_tokens=40, grammar=grammar
    )
    assert done.record.new_tokens > 20  # 4 loc + 16 seg + the label
    assert result.tokens == {
        "prompt": done.record.prompt_tokens,
        "generated": done.record.new_tokens,
    }


def _command(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scripts.check_model"],
        cwd=ROOT,
        env={**base, "HF_HOME": os.environ["HF_HOME"], **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
def test_make_check_command_on_the_tiny_model_exits_1_with_one_verdict_line(
    tiny_model_dir: Path,
) -> None:
    done = _command(
        {
            "SEGMENT_MODEL": str(tiny_model_dir),
            "SEGMENT_VAE_PATH": str(tiny_model_dir / "vae-oid.npz"),
        }
    )
    assert done.returncode == EXIT_FAIL, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("check FAIL: person: "), line
    assert FIGURES.search(line), line


@pytest.mark.slow
def test_make_check_command_without_weights_exits_2(tmp_path: Path) -> None:
    done = _command(
        {"SEGMENT_MODEL": str(tmp_path / "absent"), "SEGMENT_MODELS_DIR": str(tmp_path)}
    )
    assert done.returncode == EXIT_NO_WEIGHTS, done.stderr
    assert done.stdout == ""
    assert "make models" in done.stderr
