"""`--real-size` benchmark: PaliGemma 2 3B (random weights, real size) on this CPU.

    python -m scripts.bench_real_size --size 224 [--size 448] [--no-torch] [--no-bundled]
        [--workdir models/real-size-random] [--json bench/real_size.json]

Why: the tiny model cannot show what a 3B model costs on the MLX CPU backend, where the weights'
dtype and the BLAS library change speed by 10-20x. For each image size it times our wrapper
(`PaliGemma.load` + `PaliGemma.generate`) with the checkpoint's bfloat16 weights and widened to
float32, both with OpenBLAS preloaded as `python -m app` does, then transformers + torch bfloat16
on the same files as the reference, and last float32 on MLX's bundled BLAS (224 only; bfloat16
there is skipped: ~477 s to the first token when measured before). Every configuration runs in
its own subprocess, so peak RSS (VmHWM) is its own and a timeout can kill it.

One image, prompt "segment cat", greedy decoding of `max_new_tokens` tokens with the stop tokens
suppressed (a random model may otherwise stop at once and leave nothing to time).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = ROOT / "models" / "real-size-random"
DEFAULT_JSON = ROOT / "bench" / "real_size.json"
PROMPT = "segment cat"
TIMEOUT_S = 15 * 60  # per configuration
GIB = 1024**3
PREVIOUS = {  # measured here before (224, 260 prompt tokens), for comparison
    "mlx bf16, bundled BLAS": {"first_token_s": 477},
    "mlx bf16 + OpenBLAS": {"first_token_s": 66, "decode_s_per_token": 5.8},
    "mlx float32 + OpenBLAS": {
        "first_token_s": "14-15",
        "decode_s_per_token": 0.74,
        "peak_rss_gib": 11.9,
    },
    "torch bf16": {
        "first_token_s": "7-15",
        "decode_s_per_token": "0.33-0.39",
        "peak_rss_gib": 6.2,
    },
}


@dataclass(frozen=True)
class Job:
    """One configuration, run in its own subprocess."""

    name: str
    framework: str  # "mlx" | "torch"
    dtype: str  # mlx: our DtypePolicy ("checkpoint" = bfloat16, "float32"); torch: "bfloat16"
    blas: str  # "openblas" | "bundled" (MLX's reference BLAS) | "torch" (its own)
    image_size: int


def plan(sizes: Sequence[int], include_torch: bool, include_bundled: bool) -> list[Job]:
    """Fast configurations first for every size; the slow bundled-BLAS one last."""
    jobs: list[Job] = []
    for size in sizes:
        jobs.append(Job(f"mlx bf16 + OpenBLAS @{size}", "mlx", "checkpoint", "openblas", size))
        jobs.append(Job(f"mlx float32 + OpenBLAS @{size}", "mlx", "float32", "openblas", size))
        if include_torch:
            jobs.append(Job(f"torch bf16 @{size}", "torch", "bfloat16", "torch", size))
    if include_bundled and 224 in sizes:
        jobs.append(Job("mlx float32, bundled BLAS @224", "mlx", "float32", "bundled", 224))
    return jobs


# -- measured inside the worker subprocess --------------------------------------------------
def _memory_gib() -> dict[str, float]:
    """This process's peak (VmHWM) and current (VmRSS) resident memory."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = round(int(value.split()[0]) * 1024 / GIB, 2)
    return fields


def _openblas_mapped() -> bool:
    return "libopenblas" in Path("/proc/self/maps").read_text()


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine since boot, of this process with its threads)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), (
        own.user + own.system
    )


def _cpu_use(before: tuple[float, float], wall_s: float) -> dict[str, float]:
    """Cores this process used, and cores everything else on the machine took meanwhile.

    The machine is shared: `other_cores` well above 0 means the timing is disturbed (with 2
    cores, a second busy process makes BLAS threads wait on each other, not just halves speed).
    """
    busy, own = (now - then for now, then in zip(_cpu_seconds(), before, strict=True))
    return {
        "own_cores": round(own / wall_s, 2),
        "other_cores": round(max(busy - own, 0) / wall_s, 2),
    }


def test_image(size: int) -> Image.Image:
    """A photo-like picture (gradients + noise) already at the model's input size, so both
    frameworks see identical pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.stack([x / size, y / size, (x + y) / (2 * size)], -1) * 200
    noise = np.random.default_rng(0).normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _decode_summary(started: float, stamps: list[float]) -> dict[str, Any]:
    """First token from the call's start; decode rate from the gaps between later tokens."""
    out: dict[str, Any] = {"new_tokens": len(stamps)}
    if stamps:
        out["first_token_s"] = round(stamps[0] - started, 2)
    if len(stamps) > 1:
        per_token = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        out["decode_s_per_token"] = round(per_token, 3)
        out["decode_tokens_per_s"] = round(1 / per_token, 2)
    return out


def mlx_worker(model_dir: Path, policy: str, max_new_tokens: int) -> dict[str, Any]:
    """Our wrapper exactly as the service uses it: load, then one generate() call."""
    preloaded = _openblas_mapped()  # before any import can map an OpenBLAS of its own
    t0 = time.perf_counter()
    import mlx.core as mx
    import mlx_vlm.generate.ar
    import mlx_vlm.utils  # noqa: F401 (imported here so that load_s is loading alone)

    from app.model.paligemma import PaliGemma

    t1 = time.perf_counter()
    model = PaliGemma.load(model_dir, dtype=policy)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    after_load = _memory_gib()
    image = test_image(model.input_size[0])
    bias = mx.zeros((model.model.config.text_config.vocab_size,))
    bias[mx.array(sorted(model.layout.stop_ids))] = -mx.inf

    chosen: list[mx.array] = []  # greedy picks, kept lazy: no extra sync inside the loop

    def no_stop(tokens: mx.array, logits: mx.array) -> mx.array:
        logits = logits + bias.astype(logits.dtype)
        chosen.append(mx.argmax(logits, axis=-1))
        return logits

    stamps: list[float] = []

    def probe() -> bool:  # generate() calls it once per new token, right after the token exists
        stamps.append(time.perf_counter())
        return False

    cpu = _cpu_seconds()
    t3 = time.perf_counter()
    result = model.generate(
        image, PROMPT, max_new_tokens=max_new_tokens, logits_processors=[no_stop], cancelled=probe
    )
    return {
        "openblas_preloaded": preloaded,
        "import_s": round(t1 - t0, 2),
        "load_s": round(t2 - t1, 2),
        "weights_dtype": model.weights_dtype,
        "embed_dtype": str(model.model.language_model.model.embed_tokens.weight.dtype),
        "prompt_tokens": result.prompt_tokens,
        "vision_s": round(result.timings_ms["vision"] / 1000, 2),
        "generate_s": round(result.timings_ms["generate"] / 1000, 2),
        **_decode_summary(t3, stamps),
        "cpu_during_generate": _cpu_use(cpu, time.perf_counter() - t3),
        "token_ids": np.asarray(mx.concatenate(chosen[: len(stamps)])).tolist(),
        "rss_after_load_gib": after_load.get("VmRSS"),
        "peak_rss_after_load_gib": after_load.get("VmHWM"),
        "peak_rss_gib": _memory_gib().get("VmHWM"),
    }


def torch_worker(model_dir: Path, max_new_tokens: int) -> dict[str, Any]:
    """transformers + torch bfloat16 on the same files: the reference implementation's speed."""
    t0 = time.perf_counter()
    import torch
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(2)
    t1 = time.perf_counter()
    model: Any = PaliGemmaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16)
    model.eval()
    processor = PaliGemmaProcessor.from_pretrained(model_dir)
    t2 = time.perf_counter()
    after_load = _memory_gib()
    tokenizer = processor.tokenizer
    stop_ids = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")})
    size = int(processor.image_processor.size["height"])
    stamps: list[float] = []

    class Stamps(BaseStreamer):
        """generate() calls put() once with the prompt, then once per new token."""

        calls = 0

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls > 1:
                stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    cpu = _cpu_seconds()
    t3 = time.perf_counter()
    batch = processor(images=[test_image(size)], text=[f"<image>{PROMPT}"], return_tensors="pt")
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])  # whole prompt is prefix
    with torch.inference_mode():
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            suppress_tokens=stop_ids,
            streamer=Stamps(),
        )
    prompt_tokens = int(batch["input_ids"].shape[1])
    return {
        "import_s": round(t1 - t0, 2),
        "load_s": round(t2 - t1, 2),
        "torch_threads": torch.get_num_threads(),
        "prompt_tokens": prompt_tokens,
        **_decode_summary(t3, stamps),
        "cpu_during_generate": _cpu_use(cpu, time.perf_counter() - t3),
        "token_ids": out[0, prompt_tokens:].tolist(),
        "rss_after_load_gib": after_load.get("VmRSS"),
        "peak_rss_after_load_gib": after_load.get("VmHWM"),
        "peak_rss_gib": _memory_gib().get("VmHWM"),
    }


# -- orchestration (parent process) ---------------------------------------------------------
def _environment(blas: str) -> dict[str, str]:
    """The worker's environment: offline hub, and OpenBLAS preloaded exactly when asked."""
    from app.runtime.blas import MARKER, find_openblas, preload_environment

    env = {k: v for k, v in os.environ.items() if k != MARKER}
    kept = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "openblas" not in p]
    env["LD_PRELOAD"] = ":".join(kept)
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if blas == "openblas":
        preloaded = preload_environment(env, sys.platform, find_openblas())
        if preloaded is None:
            raise RuntimeError("no OpenBLAS to preload (app.runtime.blas.find_openblas found none)")
        return preloaded
    env["SEGMENT_BLAS"] = "bundled"  # what a user sets to run the service this way
    return env


def run_job(
    job: Job, model_dir: Path, max_new_tokens: int, timeout_s: float, logs: Path
) -> dict[str, Any]:
    """One configuration in a fresh interpreter; its numbers come back as a JSON file."""
    logs.mkdir(parents=True, exist_ok=True)
    stem = job.name.replace(" ", "_").replace("@", "").replace(",", "").replace("+", "")
    log_path, result_path = logs / f"{stem}.log", logs / f"{stem}.json"
    result_path.unlink(missing_ok=True)
    spec = {**asdict(job), "model_dir": str(model_dir), "max_new_tokens": max_new_tokens}
    row: dict[str, Any] = {**asdict(job), "load_average_before": os.getloadavg()}
    command = [sys.executable, "-m", "scripts.bench_real_size", "_worker", json.dumps(spec)]
    print(f"[{time.strftime('%H:%M:%S')}] {job.name} ...", flush=True)
    started = time.perf_counter()
    try:
        with log_path.open("w") as log:
            done = subprocess.run(
                [*command, str(result_path)],
                cwd=ROOT,
                env=_environment(job.blas),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        if done.returncode == 0 and result_path.exists():
            row |= {"status": "ok", **json.loads(result_path.read_text())}
        else:
            tail = log_path.read_text().splitlines()[-15:]
            row |= {"status": f"failed (exit {done.returncode})", "log_tail": tail}
    except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
        row |= {"status": "timed out", "timeout_s": timeout_s}
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["load_average_after"] = os.getloadavg()
    row["log"] = str(log_path)
    print(f"    {_table_line(row)}", flush=True)
    return row


def run(
    out_dir: Path,
    sizes: Sequence[int] = (224,),
    include_torch: bool = True,
    max_new_tokens: int = 8,
    *,
    include_bundled: bool = True,
    timeout_s: float = TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Build (or reuse) the random 3B checkpoints in `out_dir`, time every configuration.

    `out_dir` is the work dir: ~6 GB of weights are cached there, plus one log per run.
    """
    from scripts.real_size_model import ensure_checkpoint

    out_dir = Path(out_dir)
    checkpoints = {size: ensure_checkpoint(out_dir, size) for size in sizes}
    torch_ok = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    rows = []
    if include_torch and not torch_ok:
        rows.append({"name": "torch bf16", "status": "skipped: torch/transformers not installed"})
    if include_bundled and 224 in sizes:
        rows.append(
            {
                "name": "mlx bf16, bundled BLAS @224",
                "status": "skipped: too slow (~477 s to the first token when measured before)",
            }
        )
    for job in plan(sizes, include_torch and torch_ok, include_bundled):
        rows.append(
            run_job(job, checkpoints[job.image_size], max_new_tokens, timeout_s, out_dir / "logs")
        )
    return rows


def disk_bytes(path: Path) -> int:
    """Allocated bytes under `path`, hard links counted once (as `du` does)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for file in path.rglob("*"):
        stat = file.lstat()
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_blocks * 512
    return total


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Enough to tell whether two result files are comparable."""
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    packages = ("mlx", "mlx-vlm", "transformers", "torch", "numpy", "tokenizers", "safetensors")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in packages},
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def _table_line(row: dict[str, Any]) -> str:
    cells = [row.get(k) for k in ("load_s", "first_token_s", "decode_s_per_token", "peak_rss_gib")]
    return " | ".join([row["name"], *map(_fmt, cells), row.get("status", "")])


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: the numbers people compare."""
    head = "| configuration | load s | first token s | s/token | peak RSS GiB | status |"
    lines = [head, "|---|---:|---:|---:|---:|---|"]
    return "\n".join([*lines, *(f"| {_table_line(r)} |" for r in rows)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return _worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, action="append", help="224 (default) and/or 448")
    parser.add_argument("--no-torch", action="store_true", help="skip transformers + torch")
    parser.add_argument("--no-bundled", action="store_true", help="skip the bundled-BLAS run")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="per configuration, s")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="weights cache")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    info = machine()
    rows = run(
        args.workdir,
        args.size or [224],
        not args.no_torch,
        args.max_new_tokens,
        include_bundled=not args.no_bundled,
        timeout_s=args.timeout,
    )
    results = {
        "machine": info,
        "setup": {
            "model": "PaliGemma 2 3B, random bfloat16 weights (scripts/real_size_model.py)",
            "prompt": PROMPT,
            "image": "photo-like gradient + noise at the model's input size",
            "max_new_tokens": args.max_new_tokens,
            "decoding": "greedy, stop tokens suppressed so every run decodes max_new_tokens",
            "first_token_s": "from the generate call (preprocess + vision + prefill) to token 1",
            "decode_s_per_token": "mean gap between tokens 1..N",
            "peak_rss_gib": "VmHWM of the configuration's own subprocess",
            "workdir": str(args.workdir),
            "disk_gib": round(disk_bytes(args.workdir) / GIB, 2),
        },
        "notes": [
            "The machine is shared with other work; timings may carry some noise "
            "(see load_average_before/after per configuration).",
        ],
        "previous_measurements_224": PREVIOUS,
        "results": rows,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {args.json} in {results['total_wall_s']} s")
    return 0


def _worker_main(argv: list[str]) -> int:
    """Subprocess entry: run one configuration, write its numbers to the given JSON path."""
    spec, result_path = json.loads(argv[0]), Path(argv[1])
    model_dir, tokens = Path(spec["model_dir"]), int(spec["max_new_tokens"])
    if spec["framework"] == "mlx":
        result = mlx_worker(model_dir, spec["dtype"], tokens)
        if result["openblas_preloaded"] != (spec["blas"] == "openblas"):
            raise RuntimeError(f"OpenBLAS preloaded: {result['openblas_preloaded']}, wanted {spec}")
    else:
        result = torch_worker(model_dir, tokens)
    result_path.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
