"""The benchmark entry and its report writer: stage selection, the one table helper, the report
of the committed results, and the child-process mode (its statuses and one real child run)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from scripts import benchmark
from scripts.bench import report
from scripts.bench.common import ROOT, run_child
from scripts.harness import blas_environment


def test_the_table_helper_aligns_numbers_right_and_shows_missing_values() -> None:
    lines = report.table(["what", "ms"], [["decode", 1.5], ["overlay", None]])
    assert lines == ["| what | ms |", "|---|---:|", "| decode | 1.5 |", "| overlay | - |", ""]
    with pytest.raises(AssertionError):
        report.table(["what", "ms"], [["decode"]])


def test_no_stage_named_runs_the_defaults_and_real_size_only_when_asked() -> None:
    def names(argv: list[str]) -> list[str]:
        return [stage.name for stage in benchmark.selected(benchmark.parse(argv))]

    defaults = names([])
    assert "real_size" not in defaults
    assert {"mask_decode", "request_overhead", "overlay", "streaming"} <= set(defaults)
    assert names(["--real-size"]) == [*defaults, "real_size"]
    assert names(["--stage", "overlay", "--stage", "mask_decode"]) == ["mask_decode", "overlay"]
    listed = benchmark.stage_table()
    assert all(f"| `{stage.name}` |" in listed for stage in benchmark.STAGES)


def test_results_md_is_the_committed_json_rendered_with_every_section_filled() -> None:
    """bench/RESULTS.md is what the report writer makes of bench/*.json: every section there,
    no value missing."""
    out = ROOT / "bench"
    results = json.loads((out / report.RESULTS).read_text())
    real_size = json.loads((out / report.REAL_SIZE).read_text())
    before = json.loads((out / report.BEFORE).read_text())
    text = report.render(results, real_size=real_size, before=before)
    for heading in (
        "## Mask decode",
        "## Request overhead, 640x480",
        "## Request overhead, 4000x3000",
        "## Overlay, 4000x3000",
        "## Before -> after",
        "## Repeated image",
        "## Streaming",
        "## Constrained decoding",
        "## Throughput: requests at once",
        "## CLI on a folder",
        "## per_class=true against a joint prompt",
        "## Real-size PaliGemma 2 3B",
        "## On a Mac (on paper until measured there)",
    ):
        assert heading in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    cells = [cell.strip() for row in rows for cell in row.strip("|").split("|")]
    assert "None" not in cells
    assert re.search(r"\*\*\d+\.\d+ grey levels\*\*", text)
    assert (out / report.REPORT).read_text() == text, (
        "rewrite it: python -m scripts.benchmark --report"
    )


@pytest.mark.slow  # starts interpreters
def test_a_child_that_fails_or_overruns_reports_why_instead_of_raising(tmp_path: Path) -> None:
    env = dict(os.environ)
    failed = run_child("mask_decode", {}, env=env, log=tmp_path / "bad.log", timeout_s=120)
    assert failed["status"] == "failed (exit 1)"
    assert any("KeyError" in line for line in failed["log_tail"])
    late = run_child("mask_decode", {}, env=env, log=tmp_path / "late.log", timeout_s=0.01)
    assert late["status"] == "timed out"


@pytest.mark.slow  # a child process decoding masks
def test_a_mask_decode_child_times_every_variant_under_the_blas_it_was_given(
    tmp_path: Path,
) -> None:
    spec = {"repeats": 1, "sizes": [1], "budget_s": 0.0}
    env = blas_environment(os.environ, preloaded=False)
    result = run_child("mask_decode", spec, env=env, log=tmp_path / "vae.log", timeout_s=240)
    assert result["status"] == "ok", result
    assert result["blas"] == "bundled"
    variants = {row["variant"]: row for row in result["rows"]}
    assert {"conv (batched)", "matmul (batched)", "numpy (batched)"} <= set(variants)
    assert all(
        row["median_ms"] > 0 and row["max_abs_diff_vs_conv"] < 1e-3 for row in variants.values()
    )
