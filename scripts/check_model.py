"""`make check`: the first real run checks itself, in one line.

    python -m scripts.check_model [--label scripts/check/astronaut.json]

Segments a bundled public-domain photo (scripts/check/: NASA's portrait of astronaut Eileen
Collins, with a hand-labelled box of the person) through the Python API with the default
SEGMENT_* settings, judges whether the model found the person there (scripts/check/verdict.py)
and prints ONE verdict line: pass or fail and why, the device, the model, prefill and decode
speed and the time per object. Exit 0: pass; 1: fail, or the model could not run; 2: no
weights (run `make models`). On Linux it restarts itself with OpenBLAS preloaded, as
`python -m app` does, so the speeds are the service's.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

from app.config import Settings, SettingsError, get_settings
from app.errors import ServiceError
from app.runtime.blas import restart_with_openblas_if_needed
from app.runtime.catalog import resolve
from scripts.check.speed import Speed, describe, speed
from scripts.check.verdict import Expected, Verdict, judge

EXIT_PASS = 0
EXIT_FAIL = 1  # the verdict failed, or the model could not run (the line says which)
EXIT_NO_WEIGHTS = 2  # nothing to check yet: `make models`
LABEL = Path(__file__).resolve().parent / "check" / "astronaut.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.check_model", description=__doc__)
    parser.add_argument("--label", type=Path, default=LABEL, help="photo, prompt and box (JSON)")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAIL
    # On Linux's CPU backend, OpenBLAS as `python -m app` has it: its speeds are the ones to report.
    restart_with_openblas_if_needed(settings.blas, settings.device)
    return run_check(settings, Expected.load(args.label))


def run_check(settings: Settings, expected: Expected) -> int:
    """Segment the photo, print the verdict line; returns the exit status."""
    problem = missing_weights(settings)
    if problem is not None:
        print(f"check: no weights to check: {problem}", file=sys.stderr)
        return EXIT_NO_WEIGHTS
    from app.segmenter import Segmenter  # imports MLX (on its own thread only)

    checkpoint = resolve(settings, None)
    try:
        with Segmenter.load(settings) as segmenter:
            info = segmenter.worker.status().info
            result = segmenter.segment(expected.image, expected.prompt)
    except ServiceError as exc:
        print(f"check FAIL: the model could not run: {exc.detail}")
        return EXIT_FAIL
    verdict = judge(result.objects, expected.box)
    prompt_tokens, new_tokens = result.tokens.get("prompt"), result.tokens.get("generated")
    figures = speed(result.timings_ms, prompt_tokens, new_tokens, len(result.objects))
    model = result.model + (" (RANDOM WEIGHTS)" if checkpoint.random_weights else "")
    device = describe_device(info.device if info is not None else "unknown")
    print(verdict_line(expected.prompt, verdict, device, model, figures), flush=True)
    return EXIT_PASS if verdict.passed else EXIT_FAIL


def missing_weights(settings: Settings) -> str | None:
    """What is missing before anything can run, saying how to get it; None when nothing is."""
    try:
        resolve(settings, None)  # installed and whole, or a NotReady naming `make models`
    except ServiceError as exc:
        return exc.detail
    if not settings.vae_path.is_file():
        return (
            f"The mask decoder {settings.vae_path} is missing. Run `make models` to download it "
            "(with the model)."
        )
    return None


def verdict_line(prompt: str, verdict: Verdict, device: str, model: str, figures: Speed) -> str:
    """`check PASS|FAIL: <prompt>: <reason> | device ... | model ... | <speed figures>`."""
    head = f"check {'PASS' if verdict.passed else 'FAIL'}: {prompt}: {verdict.reason}"
    return " | ".join([head, f"device {device}", f"model {model}", *describe(figures)])


def describe_device(device: str) -> str:
    """`gpu (metal, Apple M2 Pro)`: MLX's device, its backend and the chip, no MLX call."""
    from app.runtime.device import gpu_backend

    if device == "gpu":
        return f"gpu ({gpu_backend() or 'unknown backend'}, {_chip()})"
    return f"{device} ({_chip()})"


def _chip() -> str:
    if sys.platform == "darwin":  # platform.processor() only says "arm" there
        try:
            found = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found:
            return found
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    from app.__main__ import leave  # exit without MLX's teardown at interpreter exit

    leave(main())
