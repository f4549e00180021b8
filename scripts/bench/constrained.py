"""Stage `constrained`: what constrained decoding costs per generated token.

Two views: the output grammar alone at the real vocabulary size (257,216 logits per step, the
real tokenizer layout from scripts/real_size_model.py), driven through a well-formed
three-object answer; and the tiny model's whole generation loop, made to say that answer,
with and without the grammar.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from scripts.bench.common import summary
from scripts.scripted_output import three_objects

CLASSES = ["cat", "dog", "left wheel"]
REAL_VOCAB_SIZE = 257_216


def constrained(model_dir: Path, repeats: int) -> dict[str, Any]:
    return {
        "grammar_alone": grammar_alone(repeats),
        "tiny_generation": tiny_generation(model_dir, repeats),
    }


def real_vocabulary_tokenizer(directory: Path) -> Any:
    """The real-size tokenizer files (257,216 ids, loc/seg where the real ones are), loaded."""
    from transformers import AutoTokenizer

    from app.model.tiny import write_processor_files
    from scripts.real_size_model import build_tokenizer

    write_processor_files(directory, 224, build_tokenizer())
    return AutoTokenizer.from_pretrained(str(directory))


def grammar_alone(repeats: int) -> dict[str, Any]:
    """Microseconds per step of the grammar processor at the real vocabulary size."""
    import mlx.core as mx

    from app.model.grammar import OutputGrammar
    from app.model.vocab import TokenLayout, Vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = real_vocabulary_tokenizer(Path(tmp))
    started = time.perf_counter()
    layout = TokenLayout.from_tokenizer(tokenizer, [tokenizer.eos_token_id])
    vocabulary = Vocabulary.from_tokenizer(tokenizer, layout)
    index_ms = (time.perf_counter() - started) * 1000
    ids = [*tokenizer.encode(three_objects(), add_special_tokens=False), tokenizer.eos_token_id]
    rng = np.random.default_rng(0)
    per_step: list[float] = []
    baseline: list[float] = []
    for _ in range(repeats):
        grammar = OutputGrammar(vocabulary, task="segment", classes=CLASSES)
        tokens = [2]
        for target in ids:
            noise = rng.standard_normal((1, REAL_VOCAB_SIZE)).astype(np.float32)
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
        "vocab_size": REAL_VOCAB_SIZE,
        "tokens_per_answer": len(ids),
        "vocabulary_index_ms": round(index_ms, 1),
        "grammar_us_per_token": summary(per_step),
        "log_softmax_us_per_token": summary(baseline),
    }


def tiny_generation(model_dir: Path, repeats: int) -> dict[str, Any]:
    """ms per generated token of the tiny model's real loop, forced to say the answer."""
    from PIL import Image
    from transformers import AutoTokenizer

    from app.model.generation import generate
    from app.model.grammar import OutputGrammar
    from app.model.paligemma import PaliGemma
    from scripts.scripted_output import ScriptedOutput

    model = PaliGemma.load(model_dir)
    script = ScriptedOutput(AutoTokenizer.from_pretrained(str(model_dir)), three_objects())
    image = Image.new("RGB", (224, 224), (120, 90, 60))
    prompt = "segment " + " ; ".join(CLASSES)
    rows: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    for index in range(repeats + 1):
        for name, samples in rows.items():
            grammar = OutputGrammar(model.vocabulary, task="segment", classes=CLASSES)
            generation = generate(
                model,
                image,
                prompt,
                max_new_tokens=200,
                logits_processors=script.processors(),
                grammar=grammar if name == "constrained" else None,
            )
            assert generation.text == three_objects(), generation.text
            if index:  # the first round warms up
                samples.append(generation.timings_ms["generate"] / generation.record.new_tokens)
    return {name: summary(samples) for name, samples in rows.items()}
