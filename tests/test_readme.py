"""The README's examples and tables stay true to the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.api.app import create_app
from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_configuration_table_lists_exactly_the_settings() -> None:
    documented = set(re.findall(r"^\| `SEGMENT_([A-Z_]+)` \|", README, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_configuration_table_defaults_match() -> None:
    rows = dict(re.findall(r"^\| `SEGMENT_([A-Z_]+)` \| `([^`]*)`", README, flags=re.M))
    derived = {  # defaults computed at start-up, documented by what they are made from
        "MODELS_DIR": ("<checkout>/models", Settings().models_dir == ROOT / "models"),
        "VAE_PATH": (
            "<models dir>/vae-oid.npz",
            Settings().vae_path == ROOT / "models/vae-oid.npz",
        ),
    }
    for name, field in Settings.model_fields.items():
        if name.upper() in derived:
            documented, true = derived[name.upper()]
            assert rows[name.upper()] == documented and true, name
            continue
        default = field.default
        if isinstance(default, bool):
            expected = str(default).lower()
        elif isinstance(default, list) or default is None:
            expected = ",".join(default or [])
        else:
            expected = str(default)
        assert rows[name.upper()] == expected.removesuffix(".0"), name


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_json_curl_example_runs_with_a_big_photo(tiny_model_dir: Path, tmp_path: Path) -> None:
    from scripts.harness import live_server, tiny_settings, wait_healthy
    from tests.images import noise_photo

    block = README.split("```sh\n{ printf", 1)[1].split("```", 1)[0]
    photo = tmp_path / "photo.jpg"
    noise_photo(photo, min_bytes=2 * 1024 * 1024)  # its base64 is past Linux's 128 KB per argument
    with live_server(create_app(tiny_settings(tiny_model_dir))) as url:
        wait_healthy(url, timeout_s=60)
        done = subprocess.run(
            ["bash", "-c", "{ printf" + block.replace("http://127.0.0.1:8000", url)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [o["label"] for o in answer["objects"]] == ["cat"], answer
    width, height = Image.open(photo).size  # the whole photo arrived and was decoded
    assert answer["objects"][0]["mask"]["size"] == [height, width]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_first_curl_and_requests_examples_run(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from scripts.harness import live_server, tiny_settings, wait_healthy
    from tests.images import gradient

    curl = "curl" + README.split("```sh\ncurl", 1)[1].split("```", 1)[0]
    code = README.split("```python\nimport base64, io, requests", 1)[1].split("```", 1)[0]
    gradient(120, 90).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    with live_server(create_app(tiny_settings(tiny_model_dir))) as url:
        wait_healthy(url, timeout_s=60)
        done = subprocess.run(
            ["bash", "-c", curl.replace("http://127.0.0.1:8000", url)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        code = "import base64, io, requests" + code.replace("http://127.0.0.1:8000", url)
        exec(compile(code, "README.md", "exec"), {})
    assert done.returncode == 0, done.stderr
    assert [o["label"] for o in json.loads(done.stdout)["objects"]] == ["cat", "dog"]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["cat", "dog"], lines
    assert all(line.endswith("(120, 90)") for line in lines), lines  # each mask decoded


def test_curl_example_fields_are_the_api_fields() -> None:
    curl = README.split("```sh\ncurl", 1)[1].split("```", 1)[0]
    sent = set(re.findall(r"(?:-F|--form-string) \"?(\w+)=", curl))
    schema = create_app(Settings()).openapi()
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
    monkeypatch.chdir(tmp_path)  # another directory than the checkout: the README's promise
    monkeypatch.setenv("SEGMENT_MODEL", "demo")  # as the README says to try it
    monkeypatch.setenv("SEGMENT_MODELS_DIR", str(tmp_path / "models"))  # built here, once
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


@pytest.mark.slow
def test_cli_example_runs_as_written_from_another_directory(tmp_path: Path) -> None:
    from tests.images import gradient

    line = next(ln for ln in README.splitlines() if "python -m app segment " in ln)
    (tmp_path / "photos").mkdir()
    for name in ("a", "b"):
        gradient(120, 90).save(tmp_path / "photos" / f"{name}.jpg")
    command = line.replace(".venv/bin/python", sys.executable, 1)
    env = {**os.environ, "SEGMENT_MODEL": "demo", "SEGMENT_MODELS_DIR": str(tmp_path / "m")}
    done = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    coco = json.loads((tmp_path / "results/coco.json").read_text())
    assert len(coco["images"]) == 2 and {c["name"] for c in coco["categories"]} == {"cat", "dog"}
    assert (tmp_path / "results/a.overlay.png").is_file()
    assert "DEMO" in done.stderr or "random" in done.stderr.lower()


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
