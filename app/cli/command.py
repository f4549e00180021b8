"""`python -m app segment IMAGE ... --prompt TEXT`: segment files from a shell or a script.

Runs the same pipeline as the service, in this process (the model is loaded once for all the
images) or, with --server, by sending each image to a running service. Writes per image the
service's own JSON (and the overlay PNG), and optionally one COCO file for all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from tqdm import tqdm

from app.api.schemas import render
from app.config import Settings
from app.errors import ServiceError, report
from app.pipeline import SegmentResult
from app.request import SegmentRequest, parse_request
from app.steps.coco import CocoImage, coco_document, write_coco
from app.steps.prompts import build_prompt, check_token_cap, split_task_prompt
from app.steps.scores import score_text

MASK_FORMATS = ("png", "rle", "coco_rle", "polygon", "none")
EXIT_FAILED_IMAGES = 1  # some images could not be segmented (each one says why)
EXIT_UNUSABLE = 2  # nothing could run: bad arguments, no model, no server
MAX_IN_FLIGHT = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Local PaliGemma 2 segmentation on MLX. Without a command: serve.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,segment}")
    serve = commands.add_parser(
        "serve", help="run the HTTP service (the default; SEGMENT_* variables configure it)"
    )
    serve.add_argument(
        "--stderr-max-mb",
        type=int,
        metavar="MB",
        help="empty stderr at start when it is a file past MB (the login agent's launchd file, "
        "which nothing rotates)",
    )
    segment = commands.add_parser(
        "segment",
        help="segment image files",
        description="Segment image files with the model loaded once (or via --server).",
    )
    segment.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    segment.add_argument("--prompt", required=True, help="'cat', 'cat ; dog' or 'detect car'")
    segment.add_argument(
        "--out", type=Path, help="write DIR/<stem>.json (the service's JSON) per image"
    )
    segment.add_argument("--coco", type=Path, help="write one COCO file for all the images")
    segment.add_argument(
        "--overlay", action="store_true", help="also write DIR/<stem>.overlay.png (needs --out)"
    )
    segment.add_argument("--mask-format", choices=MASK_FORMATS, default="png")
    segment.add_argument("--max-new-tokens", type=int, help="cap on generated tokens")
    segment.add_argument(
        "--model",
        help="an installed model id (see GET /models), or `demo` (a tiny random-weight model, "
        "built on first use); default SEGMENT_MODEL",
    )
    segment.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="images in flight at once, decoded together (default SEGMENT_MAX_BATCH)",
    )
    segment.add_argument(
        "--server", help="URL of a running service, e.g. http://127.0.0.1:8000 (no local model)"
    )
    segment.add_argument(
        "--token", help="API token for --server (default: SEGMENT_API_TOKEN)", default=None
    )
    return parser


def segment_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run the `segment` command; returns the process exit status."""
    if args.overlay and args.out is None:
        return _fail("--overlay writes its pictures into --out DIR; give --out too.")
    in_flight = settings.max_batch if args.batch is None else args.batch
    if not 1 <= in_flight <= MAX_IN_FLIGHT:
        return _fail(f"--batch takes a number from 1 to {MAX_IN_FLIGHT}.")
    try:
        task_prompt = build_prompt(args.prompt, max_chars=settings.max_prompt_chars)
        check_token_cap(task_prompt, args.max_new_tokens)  # at once, not once per image
        request = parse_request(  # each image adds itself to this request
            {
                "prompt": args.prompt,
                "mask_format": args.mask_format,
                "overlay": args.overlay,
                "max_new_tokens": args.max_new_tokens,
                "model_id": args.model,
            }
        )
    except ServiceError as exc:
        return _fail(exc)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    try:
        with _backend(args, settings, in_flight) as backend:
            done, failed = _segment_all(args.images, request, backend, args.out, in_flight)
    except ServiceError as exc:  # no model, no server: nothing can run
        return _fail(exc)
    if args.coco is not None:
        categories = split_task_prompt(task_prompt)[1]
        write_coco(args.coco, coco_document(done, categories))
        print(f"wrote {args.coco} ({len(done)} images)", file=sys.stderr)
    return EXIT_FAILED_IMAGES if failed else 0


class _Backend(Protocol):
    """What the loop needs of a backend: a request in, its result to come."""

    def submit(self, request: SegmentRequest) -> Future[SegmentResult]: ...


def _backend(
    args: argparse.Namespace, settings: Settings, in_flight: int
) -> AbstractContextManager[_Backend]:
    from app.cli.backends import LocalModel, RemoteService

    if args.server:
        return RemoteService(args.server, args.token or _token(settings), in_flight)
    # In this process --model is the model to load (`--model demo` needs no SEGMENT_* at all).
    return LocalModel(settings.with_model(args.model) if args.model else settings)


def _token(settings: Settings) -> str | None:
    return settings.api_token.get_secret_value() if settings.api_token else None


@dataclass
class _InFlight:
    path: Path
    stem: str
    started: float
    result: Future[SegmentResult] | OSError  # an unreadable file is its own answer


def _segment_all(
    images: list[Path],
    request: SegmentRequest,
    backend: _Backend,
    out: Path | None,
    in_flight: int,
) -> tuple[list[CocoImage], int]:
    """Up to `in_flight` images at once (they share the model's batch); their lines, files and
    the progress bar in the order given."""
    done: list[CocoImage] = []
    failed = 0
    progress = tqdm(total=len(images), unit="image", disable=len(images) < 2, file=sys.stderr)
    window: deque[_InFlight] = deque()

    def finish(item: _InFlight) -> None:
        nonlocal failed
        try:
            if isinstance(item.result, OSError):
                raise item.result
            result = item.result.result()
        except ServiceError as exc:
            failed += 1
            tqdm.write(
                f"{item.path}: FAILED: {report(exc, item.path.name).detail}", file=sys.stderr
            )
        except OSError as exc:
            failed += 1
            reason = exc.strerror or exc
            tqdm.write(f"{item.path}: FAILED: cannot read it ({reason})", file=sys.stderr)
        else:
            _write_outputs(result, item.stem, out, sys.stdout)
            done.append(CocoImage(item.path.name, result.width, result.height, result.objects))
            seconds = time.perf_counter() - item.started
            tqdm.write(_summary(item.path, result, seconds), file=sys.stderr)
        progress.update()

    try:
        for path, stem in zip(images, _unique_stems(images), strict=True):
            started = time.perf_counter()
            try:
                answer: Future[SegmentResult] | OSError = backend.submit(
                    request.model_copy(update={"image": path.read_bytes()})
                )
            except OSError as exc:
                answer = exc
            window.append(_InFlight(path, stem, started, answer))
            while len(window) >= in_flight or (window and _settled(window[0])):
                finish(window.popleft())
        while window:
            finish(window.popleft())
    finally:
        for item in window:  # interrupted: what was started stops
            if isinstance(item.result, Future):
                item.result.cancel()
        progress.close()
    return done, failed


def _settled(item: _InFlight) -> bool:
    return isinstance(item.result, OSError) or item.result.done()


def _write_outputs(result: SegmentResult, stem: str, out: Path | None, stdout: IO[str]) -> None:
    """DIR/<stem>.json (+ .overlay.png); without --out, the JSON goes to stdout, one per line."""
    body = render(result).model_dump(mode="json")
    if out is None:
        stdout.write(json.dumps(body) + "\n")
        stdout.flush()
        return
    (out / f"{stem}.json").write_text(json.dumps(body, indent=1) + "\n")
    if result.overlay_png is not None:
        (out / f"{stem}.overlay.png").write_bytes(result.overlay_png)


def _summary(path: Path, result: SegmentResult, seconds: float) -> str:
    found = ", ".join(
        o.label if o.score is None else f"{o.label} {score_text(o.score)}" for o in result.objects
    )
    count = len(result.objects)
    return (
        f"{path}: {count} object{'s' if count != 1 else ''}"
        + (f" ({found})" if found else "")
        + f" in {seconds:.2f} s"
    )


def _unique_stems(images: list[Path]) -> Iterator[str]:
    """File stems for outputs; a repeated stem (a/x.jpg, b/x.png) gets -2, -3, ..."""
    seen: dict[str, int] = {}
    for path in images:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        yield path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}"


def _fail(problem: ServiceError | str) -> int:
    message = report(problem, "-").detail if isinstance(problem, ServiceError) else problem
    print(f"error: {message}", file=sys.stderr)
    return EXIT_UNUSABLE
