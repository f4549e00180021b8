"""The one report writer: bench/RESULTS.md from bench/results.json (this run's stages), plus
bench/real_size.json (the latest --real-size run) and bench/before_request_flow.json (numbers
from before a change, for a before -> after table) when they are there.

Stages return plain data; every table here goes through `table`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS, REAL_SIZE, BEFORE, REPORT = (
    "results.json",
    "real_size.json",
    "before_request_flow.json",
    "RESULTS.md",
)


def table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None
) -> list[str]:
    """A markdown table and a blank line. `align`: "l" or "r" per column; by default the first
    column left and the others right (they hold numbers). None shows as "-"."""
    align = align or "l" + "r" * (len(columns) - 1)
    rule = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    for row in rows:
        assert len(row) == len(columns), (columns, row)
        lines.append("| " + " | ".join("-" if v is None else str(v) for v in row) + " |")
    return [*lines, ""]


def span(s: Mapping[str, float]) -> str:
    """A summary's range, "min-max"."""
    return f"{s['min']}-{s['max']}"


def write_report(out: Path) -> Path:
    """Render `out`/RESULTS.md from the JSON files in `out`."""
    results = json.loads((out / RESULTS).read_text())
    extra = {k: out / name for k, name in (("real_size", REAL_SIZE), ("before", BEFORE))}
    loaded = {k: json.loads(p.read_text()) for k, p in extra.items() if p.is_file()}
    path = out / REPORT
    path.write_text(render(results, **loaded))
    return path


def render(
    results: Mapping[str, Any],
    *,
    real_size: Mapping[str, Any] | None = None,
    before: Mapping[str, Any] | None = None,
) -> str:
    lines = header(results["machine"])
    if "mask_decode" in results:
        lines += mask_decode(results["mask_decode"])
    for row in results.get("request_overhead", []):
        lines += request_overhead(row)
    if "overlay" in results:
        lines += overlay(results["overlay"])
    if before is not None and ("request_overhead" in results or "overlay" in results):
        lines += before_after(before, results)
    if "repeated_image" in results:
        lines += repeated_image(results["repeated_image"])
    if "streaming" in results:
        lines += streaming(results["streaming"])
    if "constrained" in results:
        lines += constrained(results["constrained"])
    if "throughput" in results:
        lines += throughput(results["throughput"])
    if "cli_batch" in results:
        lines += cli_batch(results["cli_batch"])
    if "per_class" in results:
        lines += per_class(results["per_class"])
    if real_size is not None:
        lines += real_size_section(real_size)
    return "\n".join(lines) + "\n" + MAC_NOTES


def header(meta: Mapping[str, Any]) -> list[str]:
    load = meta.get("load_average_at_start")
    lines = [
        "# Benchmark results",
        "",
        f"- date: {meta['date']}; written by `make bench` (`python -m scripts.benchmark`)",
        f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['platform']}",
        f"- CPU BLAS for the in-process stages: {meta['cpu_blas']}",
        f"- MLX device: {meta['mlx_device']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        *(
            [f"- load average as the run began (1, 5, 15 min): {', '.join(map(str, load))}"]
            if load
            else []
        ),
        "- numbers: median over repeated runs after warm-up, (min-max) in brackets",
        "",
    ]
    stages = meta.get("cpu_during_stages", {})
    if stages:
        lines += [
            "CPU use while each stage ran (cores; the machine may be shared: other processes "
            "using more than ~0.3 of the cores disturb the timings):",
            "",
            *table(
                ["stage", "wall s", "this run", "other processes"],
                [
                    [f"`{k}`", v["wall_s"], v.get("own_cores"), v.get("other_cores")]
                    for k, v in stages.items()
                ],
            ),
        ]
    return lines


def mask_decode(setups: Mapping[str, Any]) -> list[str]:
    lines = ["## Mask decode (ms per request, random real-size VAE, N objects)", ""]
    for setup, outcome in setups.items():
        if outcome.get("status") != "ok":
            lines += [f"**{setup}**: {outcome.get('status')}", ""]
            continue
        rows = outcome["rows"]
        sizes = sorted({r["n"] for r in rows})
        ms = {(r["variant"], r["n"]): r for r in rows}
        median = {key: r["median_ms"] for key, r in ms.items()}
        body = [
            [
                variant,
                *(
                    f"{ms[variant, n]['median_ms']:.1f} ({ms[variant, n]['min_ms']:.1f})"
                    for n in sizes
                ),
            ]
            for variant in dict.fromkeys(r["variant"] for r in rows)
        ]
        body.append(
            [
                "**speed-up, ours (matmul batched) vs conv per object**",
                *(
                    f"{median['conv, one call per object', n] / median['matmul (batched)', n]:.1f}x"
                    for n in sizes
                ),
            ]
        )
        jax = "jax/XLA jit (batched)"
        if any(variant == jax for variant, _ in ms):
            body.append(
                [
                    "**ours / JAX-XLA (lower is better; target <= 1.5)**",
                    *(f"{median['matmul (batched)', n] / median[jax, n]:.2f}" for n in sizes),
                ]
            )
        library = "" if outcome["blas"] == "bundled" else f" ({outcome['blas']})"
        lines += [f"**{setup}**{library}: median (min) ms per request", ""]
        lines += table(["variant", *(f"N={n}" for n in sizes)], body)
    return lines


def request_overhead(row: Mapping[str, Any]) -> list[str]:
    wall, outside = row["http_wall_ms"], row["all_but_model_ms"]
    body = [[name, s["median"], span(s)] for name, s in row["stages_ms"].items()]
    body += [
        ["HTTP wall time (TestClient)", wall["median"], span(wall)],
        [
            "**everything but the model (wall - vision - generate)**",
            f"**{outside['median']}**",
            span(outside),
        ],
    ]
    return [
        f"## Request overhead, {row['image']} upload ({row['upload_bytes']:,} bytes), "
        "3 objects, tiny model",
        "",
        *table(["stage", "median ms", "min-max"], body),
    ]


def overlay(result: Mapping[str, Any]) -> list[str]:
    away = result["away_from_objects"]
    compared = f"{away['fraction_of_pixels_compared']:.0%} of the picture"
    body = [
        ["overlay (timings_ms)", result["overlay_ms"]["median"], span(result["overlay_ms"])],
        ["total (timings_ms)", result["total_ms"]["median"], span(result["total_ms"])],
        [
            "HTTP wall time (TestClient)",
            result["http_wall_ms"]["median"],
            span(result["http_wall_ms"]),
        ],
    ]
    return [
        f"## Overlay, {result['image']} photo-like JPEG ({result['upload_bytes']:,} bytes), "
        f"{result['objects']} objects, tiny model",
        "",
        f"overlay=true, mask_format=none; the photo: {result['photo']}.",
        "",
        *table(["what", "median ms", "min-max"], body),
        "Sharpness: mean |overlay - full-resolution decode of the photo| over the pixels away "
        f"from every object (boxes, outlines and tags excluded; {compared}): "
        f"**{away['mean_abs_diff']} grey levels** (max {away['max_abs_diff']}). "
        "0 means the picture is drawn on the image as sent.",
        "",
    ]


def before_after(before: Mapping[str, Any], results: Mapping[str, Any]) -> list[str]:
    """Medians before a change (from bench/before_request_flow.json) next to this run's."""
    body: list[list[Any]] = []
    after_rows = {row["image"]: row for row in results.get("request_overhead", [])}
    for image, old in before.get("request_overhead", {}).get("medians_ms", {}).items():
        row = after_rows.get(image)
        if row is None:
            continue
        new = {k: s["median"] for k, s in row["stages_ms"].items()}
        new["all_but_model"] = row["all_but_model_ms"]["median"]
        body += [[f"{image}: {k}", v, new.get(k), change(v, new.get(k))] for k, v in old.items()]
    old_overlay, new_overlay = before.get("overlay"), results.get("overlay")
    if old_overlay is not None and new_overlay is not None:
        new = {
            "overlay": new_overlay["overlay_ms"]["median"],
            "total": new_overlay["total_ms"]["median"],
            "wall": new_overlay["http_wall_ms"]["median"],
            "mean_abs_diff_away_from_objects": new_overlay["away_from_objects"]["mean_abs_diff"],
        }
        body += [
            [f"overlay 12 MP: {OVERLAY_LABELS.get(k, k)}", v, new.get(k), change(v, new.get(k))]
            for k, v in old_overlay["medians"].items()
        ]
    sources = {
        k: before[k] for k in ("request_overhead", "overlay") if "source" in before.get(k, {})
    }
    return [
        f"## Before -> after: {before['change']}",
        "",
        f"**Before**: the previous code, measured {before['date']} on this same machine "
        f"({before['machine']}). **After**: this run ({results['machine']['date']}). "
        "Medians, ms unless named.",
        "",
        *table(["what", "before", "after", "change"], body),
        *(f"- before, {k.replace('_', ' ')}: {v['source']}" for k, v in sources.items()),
        *(f"- {note}" for note in before.get("notes", [])),
        "",
    ]


OVERLAY_LABELS = {  # the others read as they are
    "wall": "wall time",
    "mean_abs_diff_away_from_objects": "mean abs difference from a full decode, grey levels",
}


def change(old: float | None, new: float | None) -> str | None:
    if old is None or new is None:
        return None
    return f"{new - old:+.1f} ({(new - old) / old:+.0%})" if old else f"{new - old:+.1f}"


def repeated_image(r: Mapping[str, Any]) -> list[str]:
    body = [
        [
            "vision tower ms",
            r["first_prompt_vision_ms"]["median"],
            r["second_prompt_vision_ms"]["median"],
        ],
        ["total ms", r["first_prompt_total_ms"]["median"], r["second_prompt_total_ms"]["median"]],
    ]
    return [
        "## Repeated image (second prompt on the same image)",
        "",
        *table(["", "first prompt", "second prompt"], body),
    ]


def streaming(r: Mapping[str, Any]) -> list[str]:
    first, done = r["first_object_ms"], r["done_ms"]
    return [
        "## Streaming (stream=true): time to first object vs the whole answer",
        "",
        "3 objects, 640x480 JPEG, tiny model, over a real loopback socket (client-side ms).",
        "",
        *table(
            ["line", "median ms", "min-max"],
            [
                ["first `object`", first["median"], span(first)],
                ["`done`", done["median"], span(done)],
            ],
        ),
    ]


def constrained(results: Mapping[str, Any]) -> list[str]:
    alone, tiny = results["grammar_alone"], results["tiny_generation"]
    g, b = alone["grammar_us_per_token"], alone["log_softmax_us_per_token"]
    u, c = tiny["unconstrained"], tiny["constrained"]
    body = [
        [
            f"grammar step at the real vocabulary ({alone['vocab_size']:,} logits), us",
            g["median"],
            span(g),
        ],
        ["for scale: one log-softmax over those logits, us", b["median"], span(b)],
        ["tiny model, whole loop, unconstrained, ms/token", u["median"], span(u)],
        ["tiny model, whole loop, constrained, ms/token", c["median"], span(c)],
        [
            "building the token index once per model load (257k ids), ms",
            alone["vocabulary_index_ms"],
            "",
        ],
    ]
    return [
        "## Constrained decoding: cost per generated token",
        "",
        f"A three-object segment answer ({alone['tokens_per_answer']} tokens) that is already "
        "well-formed, so the grammar changes nothing and only its cost shows.",
        "",
        *table(["what", "median", "min-max"], body),
    ]


def throughput(models: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Throughput: requests at once (continuous batching)",
        "",
        "Each request: a different 640x480 JPEG, 3 classes (the demo writes 3 objects, ~66 "
        "tokens), over a real loopback socket; the server in a process of its own with OpenBLAS. "
        "Targets: 4 at once within 2.5x the wall time of one alone on the tiny model (a step is "
        "mostly Python there), within 1.6x on the mid-size model (real widths and vocabulary, 2 "
        "text layers: a step is bound by reading its weights).",
        "",
    ]
    for name, result in models.items():
        if result.get("status") != "ok":
            lines += [f"**{name}**: {result.get('status')}", ""]
            continue
        rows = [
            [
                row["at_once"],
                row["wall_s"],
                f"**{row['wall_vs_alone']}x**"
                if row["at_once"] == 4
                else f"{row['wall_vs_alone']}x",
                row["requests_per_s"],
                row["latency_s"]["median"],
                span(row["latency_s"]),
            ]
            for row in result["rows"]
        ]
        lines += [
            f"**{name}** (`{result['model']}`, SEGMENT_MAX_BATCH={result['max_batch']}):",
            "",
            *table(
                ["at once", "wall s", "vs one alone", "requests/s", "latency s", "min-max"],
                rows,
            ),
        ]
    return lines


def cli_batch(result: Mapping[str, Any]) -> list[str]:
    return [
        f"## CLI on a folder ({result['images']} images, 3 classes each, tiny model)",
        "",
        "`python -m app segment` as a user runs it, its own process (model load included).",
        "",
        *table(
            ["run", "wall s"],
            [
                [
                    f"default (`--batch {result['default_batch']}`)"
                    if row["run"] == "default"
                    else f"`{row['run']}`",
                    row["wall_s"],
                ]
                for row in result["rows"]
            ],
        ),
    ]


def per_class(result: Mapping[str, Any]) -> list[str]:
    return [
        f"## per_class=true against a joint prompt ('{result['prompt']}', tiny model)",
        "",
        "per_class decodes one sequence per class, together; each has its own prefill. On the "
        "demo model both find one object per class (the grammar writes them); on a real model "
        "per_class also looks for a class the joint answer would skip.",
        "",
        *table(
            ["run", "wall ms", "min-max", "objects", "prefill ms", "generate ms"],
            [
                [
                    row["run"],
                    row["wall_ms"]["median"],
                    span(row["wall_ms"]),
                    row["objects"],
                    row["timings_ms"].get("prefill"),
                    row["timings_ms"].get("generate"),
                ]
                for row in result["rows"]
            ],
        ),
    ]


def real_size_rows(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    keys = ("load_s", "first_token_s", "decode_s_per_token", "peak_rss_gib")
    return table(
        ["configuration", "load s", "first token s", "s/token", "peak RSS GiB", "status"],
        [[r["name"], *(r.get(k) for k in keys), r.get("status", "")] for r in rows],
        align="lrrrrl",
    )


def real_size_section(real: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Real-size PaliGemma 2 3B, random weights (stage `real_size`, `--real-size`)",
        "",
        f"Run on {real['machine'].get('date', '?')}; prompt {real['setup']['prompt']!r}, "
        f"{real['setup']['max_new_tokens']} new tokens; every row its own process. Full rows "
        "and notes: bench/real_size.json.",
        "",
        *real_size_rows(real["results"]),
    ]
    if "rerun_224_quiet" in real:  # the 224 rows again, with nothing else running
        lines += ["Quiet rerun at 224:", "", *real_size_rows(real["rerun_224_quiet"]["results"])]
    return [*lines, *(f"- {note}" for note in real.get("notes", [])), ""]


MAC_NOTES = """## On a Mac (on paper until measured there)

Run `make bench` (add `BENCH_FLAGS=--real-size` for the 3B model) on Apple Silicon: MLX runs on
Metal, nothing is preloaded, and the same tables come out with `mlx_device` `gpu`. Expected from
published memory bandwidths, since decoding one token of the 3B 8-bit checkpoint reads about
2.8 GB of weights:

| chip | memory bandwidth | decode ceiling | one object (~22 tokens) after prefill |
|---|---:|---:|---:|
| M1 | 68 GB/s | ~24 tok/s | ~0.9 s |
| M2 | 100 GB/s | ~36 tok/s | ~0.6 s |
| M3 Pro | 150 GB/s | ~54 tok/s | ~0.4 s |
| M4 Pro | 273 GB/s | ~98 tok/s | ~0.2 s |
| M2 Max / M3 Max (400 GB/s) | 400 GB/s | ~143 tok/s | ~0.15 s |

Prefill (1024 image tokens + prompt at 448 px, ~6 TFLOP) is compute-bound: about 2-3 s on
an M1's GPU, well under 1 s on an M4 Pro or a Max. Real numbers land below these ceilings;
replace this table with measured rows once run on a Mac. The mask decoder picks its
formulation by timing both at load, so Metal uses whichever is faster there.

Batching on a Mac: a decode step reads those ~2.8 GB once whatever the batch, and the
arithmetic of 8 sequences (3B parameters x 2 FLOP x 8 = ~48 GFLOP a step) takes an M2's GPU
(~3.6 TFLOPS fp16) ~13 ms, under the ~28 ms the read takes at 100 GB/s. So up to about 8
sequences a step should cost close to one sequence's: 8 requests decode in roughly the time of
one (~8x the tokens per second), a Max with more compute to spare further still. What batching
cannot share is prefill, ~2-3 s per request at 448 px on an M1, which new requests pay one
after another between steps. Memory per sequence (KV cache, bf16): ~40 MB at 224 px, ~120 MB
at 448 px, so the default batch of 8 adds ~1 GB beside the model at 448 px.
"""
