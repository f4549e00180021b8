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
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Protocol

from tqdm import tqdm

from app.api.schemas import render
from app.config import Settings
from app.errors import ServiceError, report
from app.pipeline import SegmentResult
from app.request import SegmentRequest, parse_request
from app.steps.coco import CocoImage, coco_document, write_coco
from app.steps.prompts import build_prompt, split_task_prompt

MASK_FORMATS = ("png", "rle", "coco_rle", "polygon", "none")
EXIT_FAILED_IMAGES = 1  # some images could not be segmented (each one says why)
EXIT_UNUSABLE = 2  # nothing could run: bad arguments, no model, no server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Local PaliGemma 2 segmentation on MLX. Without a command: serve.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,segment}")
    commands.add_parser(
        "serve", help="run the HTTP service (the default; SEGMENT_* variables configure it)"
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
        "--model", help="an installed model id (see GET /models); default SEGMENT_MODEL"
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
    try:
        task_prompt = build_prompt(args.prompt, max_chars=settings.max_prompt_chars)
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
        with _backend(args, settings) as segment:
            done, failed = _segment_all(args.images, request, segment, args.out)
    except ServiceError as exc:  # no model, no server: nothing can run
        return _fail(exc)
    if args.coco is not None:
        categories = split_task_prompt(task_prompt)[1]
        write_coco(args.coco, coco_document(done, categories))
        print(f"wrote {args.coco} ({len(done)} images)", file=sys.stderr)
    return EXIT_FAILED_IMAGES if failed else 0


class _Segment(Protocol):
    """What the loop needs of a backend: one request in, one result out."""

    def __call__(self, request: SegmentRequest) -> SegmentResult: ...


def _backend(args: argparse.Namespace, settings: Settings) -> AbstractContextManager[_Segment]:
    from app.cli.backends import LocalModel, RemoteService

    if args.server:
        return RemoteService(args.server, args.token or _token(settings))
    return LocalModel(settings)


def _token(settings: Settings) -> str | None:
    return settings.api_token.get_secret_value() if settings.api_token else None


def _segment_all(
    images: list[Path], request: SegmentRequest, segment: _Segment, out: Path | None
) -> tuple[list[CocoImage], int]:
    done: list[CocoImage] = []
    failed = 0
    stems = _unique_stems(images)
    progress = tqdm(images, unit="image", disable=len(images) < 2, file=sys.stderr)
    for path, stem in zip(progress, stems, strict=True):
        started = time.perf_counter()
        try:
            result = segment(request.model_copy(update={"image": path.read_bytes()}))
        except ServiceError as exc:
            failed += 1
            tqdm.write(f"{path}: FAILED: {report(exc, path.name).detail}", file=sys.stderr)
            continue
        except OSError as exc:
            failed += 1
            tqdm.write(f"{path}: FAILED: cannot read it ({exc.strerror or exc})", file=sys.stderr)
            continue
        _write_outputs(result, stem, out, sys.stdout)
        done.append(CocoImage(path.name, result.width, result.height, result.objects))
        tqdm.write(_summary(path, result, time.perf_counter() - started), file=sys.stderr)
    return done, failed


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
        o.label if o.score is None else f"{o.label} {o.score:.2f}" for o in result.objects
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
