"""The README's examples and tables stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.api.app import create_app
from app.config import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_configuration_table_lists_exactly_the_settings() -> None:
    documented = set(re.findall(r"^\| `SEGMENT_([A-Z_]+)` \|", README, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_configuration_table_defaults_match() -> None:
    rows = dict(re.findall(r"^\| `SEGMENT_([A-Z_]+)` \| `([^`]*)`", README, flags=re.M))
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, bool):
            expected = str(default).lower()
        elif isinstance(default, list) or default is None:
            expected = ",".join(default or [])
        else:
            expected = str(default)
        assert rows[name.upper()] == expected.removesuffix(".0"), name


def test_curl_example_fields_are_the_api_fields() -> None:
    curl = README.split("```sh\ncurl", 1)[1].split("```", 1)[0]
    sent = set(re.findall(r"(?:-F|--form-string) \"?(\w+)=", curl))
    schema = create_app(Settings()).openapi()  # type: ignore[call-arg]
    content = schema["paths"]["/segment"]["post"]["requestBody"]["content"]
    fields = set(content["multipart/form-data"]["schema"]["properties"])
    assert sent and sent <= fields
    documented = set(re.findall(r"^\| `(\w+)` \| (?:required|one of|optional)", README, flags=re.M))
    assert documented == fields


def test_the_two_commands_come_first() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make serve" in first_block and "make test" in first_block


def test_python_api_example_runs(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.config import get_settings
    from tests.images import gradient

    example = README.split("```python\nfrom app.segmenter import Segmenter", 1)[1]
    code = "from app.segmenter import Segmenter" + example.split("```", 1)[0]
    gradient(120, 90).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGMENT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("SEGMENT_VAE_PATH", str(tiny_model_dir / "vae-oid.npz"))
    get_settings.cache_clear()
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        get_settings.cache_clear()
    # The loop printed one line per object (with no objects it prints nothing, and a mask
    # of None never reaches `.shape`): the demo model finds one cat and one dog.
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["cat", "dog"], lines
    assert all(line.endswith("(90, 120)") for line in lines), lines  # each mask (h, w)


def test_cli_example_uses_real_options() -> None:
    from app.cli.command import build_parser

    line = next(ln for ln in README.splitlines() if "python -m app segment " in ln)
    argv = line.split("python -m app ", 1)[1].replace('"cat ; dog"', "cat").split()
    args = build_parser().parse_args(argv)
    assert args.command == "segment" and args.overlay and args.coco and args.out


def test_streaming_example_runs(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.api.app import create_app
    from scripts.harness import live_server, tiny_settings, wait_healthy
    from tests.images import gradient

    code = README.split("```python\nimport json, requests", 1)[1].split("```", 1)[0]
    gradient(120, 90).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    with live_server(create_app(tiny_settings(tiny_model_dir))) as url:
        wait_healthy(url, timeout_s=60)  # fails with the last /health answer, not a bare False
        code = "import json, requests" + code.replace("http://127.0.0.1:8000", url)
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "found cat" in out and "found dog" in out and "all: 2 objects" in out
