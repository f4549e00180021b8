"""Stage `real_size` (only with --real-size): PaliGemma 2 3B, random weights at real size, on
this CPU.

Why: the tiny model cannot show what a 3B model costs on the MLX CPU backend, where the weights'
dtype and the BLAS library change speed by 10-20x. For each image size it times our wrapper
(`PaliGemma.load` + `PaliGemma.stream`) with the checkpoint's bfloat16 weights and widened to
float32, both with OpenBLAS preloaded as `python -m app` does, then transformers + torch bfloat16
on the same files as the reference, and last float32 on MLX's bundled BLAS (224 only; bfloat16
there is skipped: ~477 s to the first token when measured before). Every configuration is a
child process of the benchmark entry, so peak RSS (VmHWM) is its own and a timeout can kill it.

One image, prompt "segment cat", greedy decoding of MAX_NEW_TOKENS tokens with the stop tokens
suppressed (a random model may otherwise stop at once and leave nothing to time). The weights
(~6 GB) are built once into WORKDIR and reused.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scripts.bench.common import GIB, ROOT, cpu_seconds, cpu_use, machine, run_child
from scripts.harness import blas_environment

WORKDIR = ROOT / "models" / "real-size-random"
PROMPT = "segment cat"
MAX_NEW_TOKENS = 8
TIMEOUT_S = 15 * 60  # per configuration
PACKAGES = ("mlx", "mlx-vlm", "transformers", "torch", "numpy", "tokenizers", "safetensors")
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
    """One configuration, run in its own child process."""

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


# -- the parent: build the weights, run each configuration as a child -----------------------
def real_size(
    sizes: Sequence[int] = (224,),
    *,
    include_torch: bool = True,
    include_bundled: bool = True,
    workdir: Path = WORKDIR,
) -> dict[str, Any]:
    """Build (or reuse) the random 3B checkpoints in `workdir`, time every configuration; the
    result is what bench/real_size.json holds."""
    from scripts.real_size_model import ensure_checkpoint

    started = time.perf_counter()
    info = machine(PACKAGES)
    checkpoints = {size: ensure_checkpoint(workdir, size) for size in sizes}
    torch_ok = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    rows: list[dict[str, Any]] = []
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
        rows.append(run_job(job, checkpoints[job.image_size], workdir / "logs"))
    return {
        "machine": info,
        "setup": {
            "model": "PaliGemma 2 3B, random bfloat16 weights (scripts/real_size_model.py)",
            "prompt": PROMPT,
            "image": "photo-like gradient + noise at the model's input size",
            "max_new_tokens": MAX_NEW_TOKENS,
            "decoding": "greedy, stop tokens suppressed so every run decodes max_new_tokens",
            "first_token_s": "from the generate call (preprocess + vision + prefill) to token 1",
            "decode_s_per_token": "mean gap between tokens 1..N",
            "peak_rss_gib": "VmHWM of the configuration's own subprocess",
            "workdir": str(workdir),
            "disk_gib": round(disk_bytes(workdir) / GIB, 2),
        },
        "notes": [
            "The machine is shared with other work; timings may carry some noise "
            "(see load_average_before/after per configuration).",
        ],
        "previous_measurements_224": PREVIOUS,
        "results": rows,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }


def run_job(job: Job, model_dir: Path, logs: Path) -> dict[str, Any]:
    """One configuration in a fresh interpreter, OpenBLAS preloaded exactly when it asks."""
    stem = job.name.replace(" ", "_").replace("@", "").replace(",", "").replace("+", "")
    spec = {**asdict(job), "model_dir": str(model_dir), "max_new_tokens": MAX_NEW_TOKENS}
    env = blas_environment(os.environ, preloaded=job.blas == "openblas")
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if job.blas != "openblas":
        env["SEGMENT_BLAS"] = "bundled"  # what a user sets to run the service this way
    print(f"  [{time.strftime('%H:%M:%S')}] {job.name} ...", flush=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    outcome = run_child("real_size", spec, env=env, log=logs / f"{stem}.log", timeout_s=TIMEOUT_S)
    row: dict[str, Any] = {**asdict(job), "load_average_before": load_before, **outcome}
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["load_average_after"] = os.getloadavg()
    row.setdefault("log", str(logs / f"{stem}.log"))
    print(f"    {row['status']}: first token {row.get('first_token_s', '-')} s", flush=True)
    return row


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


# -- the child: one configuration ------------------------------------------------------------
def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the configuration `spec` describes; refuse to report one on the wrong BLAS."""
    model_dir, tokens = Path(spec["model_dir"]), int(spec["max_new_tokens"])
    if spec["framework"] != "mlx":
        return torch_worker(model_dir, tokens)
    result = mlx_worker(model_dir, spec["dtype"], tokens)
    if result["openblas_preloaded"] != (spec["blas"] == "openblas"):
        raise RuntimeError(f"OpenBLAS preloaded: {result['openblas_preloaded']}, wanted {spec}")
    return result


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


def model_sized_photo(size: int) -> Image.Image:
    """A photo-like picture (gradients + noise) already at the model's input size, so both
    frameworks see identical pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.stack([x / size, y / size, (x + y) / (2 * size)], -1) * 200  # (size, size, 3)
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
    """Our wrapper exactly as the service uses it: load, then one generation."""
    preloaded = _openblas_mapped()  # before any import can map an OpenBLAS of its own
    t0 = time.perf_counter()
    import mlx.core as mx
    import mlx_vlm.generate.ar
    import mlx_vlm.utils  # noqa: F401 (imported here so that load_s is loading alone)

    from app.model.generation import Batch
    from app.model.paligemma import PaliGemma

    t1 = time.perf_counter()
    model = PaliGemma.load(model_dir, dtype=policy)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    after_load = _memory_gib()
    image = model_sized_photo(model.input_size[0])
    bias = mx.zeros((model.module.config.text_config.vocab_size,))
    bias[mx.array(sorted(model.layout.stop_ids))] = -mx.inf

    chosen: list[mx.array] = []  # greedy picks, kept lazy: no extra sync inside the loop

    def no_stop(tokens: mx.array, logits: mx.array) -> mx.array:
        logits = logits + bias.astype(logits.dtype)
        chosen.append(mx.argmax(logits, axis=-1))
        return logits

    stamps: list[float] = []  # when each new token exists
    cpu = cpu_seconds()
    t3 = time.perf_counter()
    batch = Batch(model)  # one sequence, decoded as the service decodes a batch
    advance = batch.add("one", image, PROMPT, max_new_tokens=max_new_tokens, processors=[no_stop])
    stamps.append(time.perf_counter())
    while advance.done is None:
        [advance] = batch.step()
        stamps.append(time.perf_counter())
    record = advance.done
    return {
        "openblas_preloaded": preloaded,
        "import_s": round(t1 - t0, 2),
        "load_s": round(t2 - t1, 2),
        "weights_dtype": model.weights_dtype,
        "embed_dtype": str(model.module.language_model.model.embed_tokens.weight.dtype),
        "prompt_tokens": record.prompt_tokens,
        "vision_s": round(record.timings_ms["vision"] / 1000, 2),
        "generate_s": round(record.timings_ms["generate"] / 1000, 2),
        **_decode_summary(t3, stamps),
        "cpu_during_generate": cpu_use(cpu, time.perf_counter() - t3),
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

    cpu = cpu_seconds()
    t3 = time.perf_counter()
    batch = processor(
        images=[model_sized_photo(size)], text=[f"<image>{PROMPT}"], return_tensors="pt"
    )
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
        "cpu_during_generate": cpu_use(cpu, time.perf_counter() - t3),
        "token_ids": out[0, prompt_tokens:].tolist(),
        "rss_after_load_gib": after_load.get("VmRSS"),
        "peak_rss_after_load_gib": after_load.get("VmHWM"),
        "peak_rss_gib": _memory_gib().get("VmHWM"),
    }
