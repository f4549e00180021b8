"""What constrained decoding costs per generated token (a `make bench` stage).

Two views: the output grammar alone at the real vocabulary size (257,216 logits per step, the
real tokenizer layout from scripts/real_size_model.py), driven through a well-formed
three-object answer; and the tiny model's whole generation loop, made to say that answer,
with and without the grammar.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from scripts.scripted_output import three_objects

CLASSES = ["cat", "dog", "left wheel"]


def real_vocabulary_tokenizer(directory: Path) -> Any:
    """The real-size tokenizer files (257,216 ids, loc/seg where the real ones are), loaded."""
    from transformers import AutoTokenizer

    from scripts.make_tiny_model import write_processor_files
    from scripts.real_size_model import build_tokenizer

    write_processor_files(directory, 224, build_tokenizer())
    return AutoTokenizer.from_pretrained(str(directory))


def grammar_alone(repeats: int) -> dict[str, Any]:
    """Microseconds per step of the grammar processor at the real vocabulary size."""
    import mlx.core as mx  # here, not at import: `make bench` picks the BLAS first

    from app.model.grammar import OutputGrammar
    from app.model.vocab import TokenLayout, Vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = real_vocabulary_tokenizer(Path(tmp))
    started = time.perf_counter()
    layout = TokenLayout.from_tokenizer(tokenizer, [tokenizer.eos_token_id])
    vocabulary = Vocabulary.from_tokenizer(tokenizer, layout)
    index_ms = (time.perf_counter() - started) * 1000
    ids = [*tokenizer.encode(three_objects(), add_special_tokens=False), tokenizer.eos_token_id]
    vocab_size = 257_216
    rng = np.random.default_rng(0)
    per_step: list[float] = []
    baseline: list[float] = []
    for _ in range(repeats):
        grammar = OutputGrammar(vocabulary, task="segment", classes=CLASSES)
        tokens = [2]
        for target in ids:
            noise = rng.standard_normal((1, vocab_size)).astype(np.float32)
            noise[0, target] += 50.0  # the "model" says the answer
            logits = mx.array(noise)
            mx.eval(logits)
            t0 = time.perf_counter()
            mx.eval(logits - mx.logsumexp(logits, axis=-1, keepdims=True))  # what sampling does
            t1 = time.perf_counter()
            out = grammar(mx.array(tokens), logits)
            mx.eval(out, *grammar.model_logprobs[-1])
            t2 = time.perf_counter()
            grammar.model_logprob(target)
            baseline.append((t1 - t0) * 1e6)
            per_step.append((t2 - t1) * 1e6)
            tokens.append(int(np.asarray(mx.argmax(out, axis=-1))[0]))
        assert tokens[1:] == ids, "the grammar changed a well-formed answer"
    return {
        "vocab_size": vocab_size,
        "tokens_per_answer": len(ids),
        "vocabulary_index_ms": round(index_ms, 1),
        "grammar_us_per_token": _summary(per_step),
        "log_softmax_us_per_token": _summary(baseline),
    }


def tiny_generation(model_dir: Path, repeats: int) -> dict[str, Any]:
    """ms per generated token of the tiny model's real loop, forced to say the answer."""
    from PIL import Image
    from transformers import AutoTokenizer

    from app.model.grammar import OutputGrammar
    from app.model.paligemma import PaliGemma
    from scripts.scripted_output import ScriptedOutput

    model = PaliGemma.load(model_dir)
    script = ScriptedOutput(AutoTokenizer.from_pretrained(str(model_dir)), three_objects())
    image = Image.new("RGB", (224, 224), (120, 90, 60))
    prompt = "segment " + " ; ".join(CLASSES)
    rows: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    for index in range(repeats + 1):
        for name in rows:
            grammar = OutputGrammar(model.vocabulary, task="segment", classes=CLASSES)
            generation = model.generate(
                image,
                prompt,
                max_new_tokens=200,
                logits_processors=script.processors(),
                grammar=grammar if name == "constrained" else None,
            )
            assert generation.text == three_objects(), generation.text
            if index:  # the first round warms up
                rows[name].append(generation.timings_ms["generate"] / generation.new_tokens)
    return {name: _summary(samples) for name, samples in rows.items()}


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 2),
        "min": round(min(samples), 2),
        "max": round(max(samples), 2),
        "runs": len(samples),
    }


def table(results: dict[str, Any]) -> list[str]:
    alone, tiny = results["grammar_alone"], results["tiny_generation"]
    g, b = alone["grammar_us_per_token"], alone["log_softmax_us_per_token"]
    u, c = tiny["unconstrained"], tiny["constrained"]
    return [
        "## Constrained decoding: cost per generated token",
        "",
        f"A three-object segment answer ({alone['tokens_per_answer']} tokens) that is already "
        "well-formed, so the grammar changes nothing and only its cost shows.",
        "",
        "| what | median | min-max |",
        "|---|---:|---:|",
        f"| grammar step at the real vocabulary ({alone['vocab_size']:,} logits), us | "
        f"{g['median']} | {g['min']}-{g['max']} |",
        f"| for scale: one log-softmax over those logits, us | {b['median']} | "
        f"{b['min']}-{b['max']} |",
        f"| tiny model, whole loop, unconstrained, ms/token | {u['median']} | "
        f"{u['min']}-{u['max']} |",
        f"| tiny model, whole loop, constrained, ms/token | {c['median']} | "
        f"{c['min']}-{c['max']} |",
        f"| building the token index once per model load (257k ids), ms | "
        f"{alone['vocabulary_index_ms']} | |",
        "",
    ]
