"""`python -m app segment ...` and `python -m app --help`, on the tiny random model."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from app.api.app import create_app
from app.cli.command import build_parser, segment_command
from app.steps.masks import decode_png
from scripts.harness import ROOT, live_server, tiny_settings
from tests.images import gradient, image_bytes


def run_cli(argv: list[str], settings: Any) -> int:
    return segment_command(build_parser().parse_args(["segment", *argv]), settings)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    first, second = tmp_path / "in" / "street.png", tmp_path / "in" / "room.jpg"
    first.parent.mkdir()
    first.write_bytes(image_bytes(gradient(160, 120)))
    second.write_bytes(image_bytes(gradient(90, 140), "JPEG"))
    return [first, second]


def test_help_prints_usage_and_serves_nothing() -> None:
    for argv in (["--help"], ["segment", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "app", *argv], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0 and "usage: python -m app" in done.stdout
    assert "--coco" in done.stdout and "--server" in done.stdout


def test_segment_writes_json_overlays_and_a_coco_file(
    tiny_model_dir: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, coco_path = tmp_path / "out", tmp_path / "coco.json"
    argv = [*map(str, images), "--prompt", "cat ; dog", "--out", str(out), "--overlay"]
    status = run_cli([*argv, "--coco", str(coco_path)], tiny_settings(tiny_model_dir))
    assert status == 0
    log = capsys.readouterr().err
    assert "street.png: 2 objects (cat" in log and "room.jpg: 2 objects" in log

    body = json.loads((out / "street.json").read_text())
    assert set(body) >= {"model", "prompt", "width", "height", "objects", "timings_ms"}
    assert body["prompt"] == "segment cat ; dog" and (body["width"], body["height"]) == (160, 120)
    [first, _] = body["objects"]
    assert decode_png(first["mask"]).shape == (120, 160) and first["area"] > 0
    overlay = Image.open(out / "room.overlay.png")
    assert overlay.size == (90, 140)

    coco = COCO(str(coco_path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    [street] = coco.loadImgs(coco.getImgIds(imgIds=[1]))
    assert (street["file_name"], street["width"], street["height"]) == ("street.png", 160, 120)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[street["id"]]))
    assert len(annotations) == 2
    for annotation, wire in zip(annotations, body["objects"], strict=True):
        assert np.array_equal(coco.annToMask(annotation).astype(bool), decode_png(wire["mask"]))
        x0, y0, x1, y1 = wire["box"]
        assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert annotation["area"] == wire["area"] and annotation["score"] == wire["score"]


def test_without_out_the_json_goes_to_stdout(
    tiny_model_dir: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli([str(images[0]), "--prompt", "detect car"], tiny_settings(tiny_model_dir)) == 0
    [line] = capsys.readouterr().out.splitlines()
    body = json.loads(line)
    assert body["prompt"] == "detect car" and body["objects"][0]["mask"] is None


def test_an_unreadable_image_fails_alone(
    tiny_model_dir: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    argv = [str(tmp_path / "missing.png"), str(text), str(images[0]), "--prompt", "cat"]
    assert run_cli([*argv, "--out", str(tmp_path / "o")], tiny_settings(tiny_model_dir)) == 1
    log = capsys.readouterr().err
    assert "missing.png: FAILED: cannot read it" in log
    assert "notes.txt: FAILED: The image sent is not a recognised image" in log
    assert (tmp_path / "o" / "street.json").is_file()


def test_a_missing_model_is_one_clear_error(
    tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tiny_settings(tmp_path / "absent")
    assert run_cli([str(images[0]), "--prompt", "cat"], settings) == 2
    err = capsys.readouterr().err
    assert "make models" in err and "Traceback" not in err


def test_bad_arguments_exit_2(tiny_model_dir: Path, images: list[Path]) -> None:
    settings = tiny_settings(tiny_model_dir)
    assert run_cli([str(images[0]), "--prompt", "   "], settings) == 2
    assert run_cli([str(images[0]), "--prompt", "cat", "--overlay"], settings) == 2
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["segment", "a.png", "--prompt", "x", "--mask-format", "jpg"])
    assert refused.value.code == 2


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    with live_server(create_app(tiny_settings(tiny_model_dir))) as url:
        yield url


@pytest.mark.parametrize("mask_format", ["png", "rle", "polygon"])
def test_server_mode_writes_what_the_local_model_writes(
    tiny_model_dir: Path, server: str, images: list[Path], tmp_path: Path, mask_format: str
) -> None:
    results = {}
    for mode, extra in (("local", []), ("server", ["--server", server])):
        out = tmp_path / mode
        argv = [str(images[0]), "--prompt", "cat ; dog", "--out", str(out), "--overlay"]
        assert (
            run_cli([*argv, "--mask-format", mask_format, *extra], tiny_settings(tiny_model_dir))
            == 0
        )
        body = json.loads((out / "street.json").read_text())
        overlay = (out / "street.overlay.png").read_bytes()
        results[mode] = (body["objects"], body["text"], overlay)
    local, remote = results["local"], results["server"]
    assert local[0] == remote[0] and local[1] == remote[1]
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(local[2]))), np.asarray(Image.open(io.BytesIO(remote[2])))
    )


@pytest.mark.parametrize("remote", [False, True])
def test_model_picks_the_checkpoint_locally_and_on_a_server(
    tiny_model_dir: Path,
    server: str,
    images: list[Path],
    tmp_path: Path,
    remote: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--model reaches the request both ways: the installed model by its id. An id nothing
    installed answers to is, on a server, that image's error; here, where --model is the model
    to load, nothing can run (exit 2), as without weights."""
    extra = ["--server", server] if remote else []
    base = [str(images[0]), "--prompt", "cat", *extra]
    settings = tiny_settings(tiny_model_dir)
    assert run_cli([*base, "--out", str(tmp_path), "--model", str(tiny_model_dir)], settings) == 0
    assert json.loads((tmp_path / "street.json").read_text())["model"] == str(tiny_model_dir)
    assert run_cli([*base, "--model", "someone/else"], settings) == (1 if remote else 2)
    said = capsys.readouterr().err
    assert "'someone/else' is not installed" in said
    if not remote:
        assert f"looked in {settings.models_dir / 'someone/else'}" in said  # absolute


@pytest.mark.parametrize("remote", [False, True])
def test_the_demo_model_is_called_meaningless_both_ways(
    tiny_model_dir: Path,
    server: str,
    images: list[Path],
    tmp_path: Path,
    remote: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run here, the model warns as it loads; behind --server, /health's random_weights
    makes the command say the same."""
    extra = ["--server", server] if remote else []
    argv = [str(images[0]), "--prompt", "cat", "--out", str(tmp_path), *extra]
    with caplog.at_level(logging.WARNING):
        assert run_cli(argv, tiny_settings(tiny_model_dir)) == 0
    here = "app.cli.backends" if remote else "app.model.runner"
    warned = [r.getMessage() for r in caplog.records if r.name == here]
    assert any(
        m.startswith(f"DEMO MODEL: {tiny_model_dir}")
        and "random weights; outputs are meaningless" in m
        for m in warned
    ), caplog.text


def test_server_mode_reports_an_unreachable_service(
    tiny_model_dir: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(images[0]), "--prompt", "cat", "--server", "http://127.0.0.1:9"]
    assert run_cli(argv, tiny_settings(tiny_model_dir)) == 2
    assert "Cannot reach the service at http://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_app_segment_as_a_user_runs_it(tiny_model_dir: Path, images: list[Path]) -> None:
    env = {
        "SEGMENT_MODEL": str(tiny_model_dir),
        "SEGMENT_VAE_PATH": str(tiny_model_dir / "vae-oid.npz"),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "segment",
            str(images[0]),
            "--prompt",
            "cat",
            "--mask-format",
            "rle",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["objects"][0]["mask"]["size"] == [120, 160]


def test_server_mode_passes_the_token_and_reports_a_refusal(
    tiny_model_dir: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tiny_settings(tiny_model_dir, api_token="s3cret")
    with live_server(create_app(settings)) as url:
        argv = [str(images[0]), "--prompt", "cat", "--server", url]
        assert run_cli([*argv, "--token", "wrong"], settings) == 1
        assert "the service answered 401: Missing or wrong API token" in capsys.readouterr().err
        assert run_cli(argv, settings) == 0  # SEGMENT_API_TOKEN from the settings


@pytest.mark.slow
def test_the_exit_status_survives_mlx_teardown(tmp_path: Path) -> None:
    """MLX used on a worker thread that has ended makes the interpreter's teardown abort
    (exit 134, measured here every time); `leave`, which `python -m app` exits through, does
    not run that teardown."""
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from app.model.vae import MaskDecoder\n"
        "from app.__main__ import leave\n"
        "from app.model.random_vae import write_random_vae\n"
        f"path = write_random_vae({str(tmp_path / 'vae.npz')!r})\n"
        "pool = ThreadPoolExecutor(1)\n"
        "pool.submit(MaskDecoder.load, path).result()\n"
        "pool.shutdown()\n"
        "print('done', flush=True)\n"
        "leave(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr


class _OutOfOrder:
    """A backend whose answers come back in reverse: the first image is the slowest."""

    def __init__(self, results: dict[bytes, Any]) -> None:
        self.results = results
        self.pending: list[tuple[Future[Any], bytes]] = []
        self.most_in_flight = 0

    def submit(self, request: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.pending.append((future, request.image))
        self.most_in_flight = max(self.most_in_flight, len(self.pending))
        if len(self.pending) == 3 or request.image == b"last":
            for waiting, image in reversed(self.pending):  # answered last-first
                waiting.set_result(self.results[image])
            self.pending.clear()
        return future


def test_batch_keeps_several_in_flight_and_the_output_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.command import _segment_all
    from app.pipeline import SegmentResult
    from app.request import SegmentRequest

    names = ["a", "b", "c", "d", "last"]
    paths = []
    for name in names:
        (tmp_path / f"{name}.png").write_bytes(name.encode())
        paths.append(tmp_path / f"{name}.png")
    results = {
        name.encode(): SegmentResult("m", "segment cat", 1, 1, name, [], None, {}, {})
        for name in names
    }
    backend = _OutOfOrder(results)
    done, failed = _segment_all(paths, SegmentRequest(prompt="cat"), backend, None, in_flight=3)
    assert failed == 0 and backend.most_in_flight == 3
    lines = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert lines == names  # the order given, though answered out of it
    assert [image.file_name for image in done] == [f"{name}.png" for name in names]


def test_batch_must_be_a_sensible_number(tiny_model_dir: Path, images: list[Path]) -> None:
    settings = tiny_settings(tiny_model_dir)
    assert run_cli([str(images[0]), "--prompt", "cat", "--batch", "0"], settings) == 2
