"""`make bench`: the one benchmark entry. Runs the stages, writes bench/results.json, then
bench/RESULTS.md through the one report writer (scripts/bench/report.py).

    python -m scripts.benchmark [--stage NAME ...] [--quick] [--real-size] [--out bench]
    python -m scripts.benchmark --list      # the stages, as a table
    python -m scripts.benchmark --report    # only rewrite RESULTS.md from the JSON files

With no --stage it runs every default stage (a few minutes on 2 CPU cores); --real-size adds
PaliGemma 2 3B with random weights (built locally, never downloaded: ~30 min on 2 cores). On
Linux it first restarts itself with OpenBLAS preloaded, exactly as `python -m app` does, so
the in-process stages measure what the service runs. A stage that needs its own process (the
mask decoder under each BLAS, each real-size configuration) runs this same entry as a child:
`--stage NAME --child SPEC --result FILE`, a mode for the stages' own use.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from app.runtime.blas import restart_with_openblas_if_needed
from scripts.bench.common import ROOT
from scripts.bench.report import REAL_SIZE, RESULTS, table, write_report


class Run:
    """What the stages of one run share: its options, a scratch folder, the tiny model."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args = args
        self.scratch = scratch
        self.repeats = 3 if args.quick else 7

    @cached_property
    def model_dir(self) -> Path:
        """The tiny random PaliGemma 2 and VAE, built on first use (~1 s)."""
        from app.model.tiny import build_tiny_model

        return build_tiny_model(self.scratch / "tiny")


# Each stage's code is imported when it runs: listing stages, the report and a child process
# (whose BLAS must be the one its parent chose) import nothing they do not use.
def _mask_decode(run: Run) -> Any:
    from scripts.bench.mask_decode import mask_decode

    return mask_decode(run.repeats, run.scratch)


def _mask_decode_child(spec: dict[str, Any]) -> dict[str, Any]:
    from scripts.bench.mask_decode import child

    return child(spec)


def _service(name: str) -> Callable[[Run], Any]:
    def stage(run: Run) -> Any:
        from scripts.bench import service

        return getattr(service, name)(run.model_dir, run.repeats)

    return stage


def _constrained(run: Run) -> Any:
    from scripts.bench.constrained import constrained

    return constrained(run.model_dir, run.repeats)


def _throughput(run: Run) -> Any:
    from scripts.bench.batching import throughput

    return throughput(run.model_dir, run.scratch, run.args.quick)


def _throughput_child(spec: dict[str, Any]) -> dict[str, Any]:
    from scripts.bench.batching import throughput_child

    return throughput_child(spec)


def _cli_batch(run: Run) -> Any:
    from scripts.bench.batching import cli_batch

    return cli_batch(run.model_dir, run.args.quick)


def _per_class(run: Run) -> Any:
    from scripts.bench.batching import per_class

    return per_class(run.model_dir, run.repeats)


def _real_size(run: Run) -> Any:
    from scripts.bench.real_size import real_size

    skip = run.args.real_size_skip or []
    return real_size(
        run.args.real_size_images or [224],
        include_torch="torch" not in skip,
        include_bundled="bundled" not in skip,
    )


def _real_size_child(spec: dict[str, Any]) -> dict[str, Any]:
    from scripts.bench.real_size import child

    return child(spec)


@dataclass(frozen=True)
class Stage:
    name: str
    measures: str
    default: bool  # runs when no --stage is named (else only when named, or with its flag)
    process: str  # where it runs
    run: Callable[[Run], Any]  # -> plain, JSON-able data
    child: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # its child-process mode
    file: str = RESULTS  # where its data goes in --out


STAGES = (
    Stage(
        "mask_decode",
        "VAE mask decoder per request, N=1/4/8/16: conv vs matmul, mx.compile, batched vs per "
        "object, NumPy, JAX if installed",
        True,
        "a child process per BLAS (bundled, OpenBLAS)",
        _mask_decode,
        _mask_decode_child,
    ),
    Stage(
        "request_overhead",
        "where a plain 3-object request's time goes at 640x480 and 12 MP: stages, and wall "
        "minus the model",
        True,
        "in-process (TestClient)",
        _service("request_overhead"),
    ),
    Stage(
        "overlay",
        "overlay=true on a 12 MP photo-like JPEG, 3 objects: overlay, total, wall; mean "
        "difference from a full decode away from the objects",
        True,
        "in-process (TestClient)",
        _service("overlay"),
    ),
    Stage(
        "repeated_image",
        "a second prompt on the same image (vision features from the cache)",
        True,
        "in-process (TestClient)",
        _service("repeated_image"),
    ),
    Stage(
        "streaming",
        "stream=true: time to the first object line vs the `done` line",
        True,
        "in-process uvicorn, real loopback socket",
        _service("streaming"),
    ),
    Stage(
        "constrained",
        "constrained decoding per token: the grammar at the real vocabulary, the tiny loop "
        "with and without it",
        True,
        "in-process",
        _constrained,
    ),
    Stage(
        "throughput",
        "1, 2, 4, 8 requests at once (continuous batching): wall vs one alone, requests/s, "
        "latency; the tiny model and a mid-size one (real widths, 2 text layers)",
        True,
        "a child process per model, uvicorn on loopback inside it",
        _throughput,
        _throughput_child,
    ),
    Stage(
        "cli_batch",
        "`python -m app segment` on 16 images: --batch 1 vs the default",
        True,
        "`python -m app` processes",
        _cli_batch,
    ),
    Stage(
        "per_class",
        "per_class=true vs a joint prompt, 3 classes: wall time and objects",
        True,
        "in-process (TestClient)",
        _per_class,
    ),
    Stage(
        "real_size",
        "PaliGemma 2 3B, random weights: load, first token, s/token, peak RSS; MLX (bf16, "
        "float32; OpenBLAS, bundled) vs torch",
        False,
        "a child process per configuration (timeout, own peak RSS); writes real_size.json",
        _real_size,
        _real_size_child,
        REAL_SIZE,
    ),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def stage_table() -> str:
    rows = [
        [f"`{s.name}`", s.measures, "default" if s.default else "`--real-size`", s.process]
        for s in STAGES
    ]
    return "\n".join(table(["stage", "measures", "runs", "process"], rows, align="llll"))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the service's stages; write results.json and RESULTS.md.",
        epilog="stages:\n" + stage_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", action="append", choices=list(BY_NAME), help="repeatable")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--real-size", action="store_true", help="add the real_size stage")
    parser.add_argument(
        "--real-size-images", type=int, nargs="+", help="real_size input sizes (default 224)"
    )
    parser.add_argument(
        "--real-size-skip", action="append", choices=["torch", "bundled"], help="real_size rows"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="default: bench/")
    parser.add_argument("--list", action="store_true", help="print the stages and exit")
    parser.add_argument("--report", action="store_true", help="only rewrite RESULTS.md")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> list[Stage]:
    named = set(args.stage or [s.name for s in STAGES if s.default])
    if args.real_size:
        named.add("real_size")
    return [s for s in STAGES if s.name in named]


def reexecute_like_the_service() -> None:
    """On Linux `python -m app` restarts once with OpenBLAS preloaded (app.runtime.blas
    decides; SEGMENT_BLAS=bundled turns it off): do the same, so the bench measures that."""
    from app.config import get_settings

    settings = get_settings()
    restart_with_openblas_if_needed(settings.blas, settings.device)


def child_main(args: argparse.Namespace) -> int:
    """A stage's child process: run its piece as the environment given, write the numbers."""
    stages = args.stage or []
    stage = BY_NAME[stages[0]] if len(stages) == 1 else None
    if stage is None or stage.child is None or args.result is None:
        raise SystemExit("--child needs one --stage that has a child mode, and --result FILE")
    result = stage.child(json.loads(args.child))
    args.result.write_text(json.dumps(result) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        print(stage_table())
        return 0
    if args.child is not None:
        return child_main(args)
    if args.report:
        print(write_report(args.out).read_text())
        return 0
    reexecute_like_the_service()
    from scripts.bench.common import cpu_seconds, cpu_use, machine

    results: dict[str, Any] = {"machine": machine()}
    load: dict[str, dict[str, float]] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        run = Run(args, Path(scratch))
        for stage in selected(args):
            print(f"{stage.name} ...", flush=True)
            cpu, started = cpu_seconds(), time.perf_counter()
            data = stage.run(run)
            wall_s = time.perf_counter() - started
            load[stage.name] = {"wall_s": round(wall_s, 1), **cpu_use(cpu, wall_s)}
            if stage.file == RESULTS:
                results[stage.name] = data
            else:  # kept apart: run rarely, and the report shows the latest
                (args.out / stage.file).write_text(json.dumps(data, indent=2) + "\n")
    results["machine"]["cpu_during_stages"] = load
    if len(results) > 1 or not (args.out / RESULTS).is_file():
        (args.out / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    print(write_report(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
