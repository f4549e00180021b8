"""The soak script in its short form: mixed good and bad requests, concurrency 8, tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import soak

pytestmark = pytest.mark.slow  # starts a server process or a live server


def test_short_soak_has_no_5xx_no_hang_and_no_memory_growth(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    assert soak.main(["--requests", "200", "--max-seconds", "90", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["requests"] == 200 and report["no_answer"] == 0
    assert set(report["statuses"]) == {"200", "400", "415"}
    assert report["growth_after_warmup"] <= 0.05
