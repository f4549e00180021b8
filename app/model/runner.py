"""One loaded checkpoint: PaliGemma and the mask decoder, run one request at a time.

Everything here touches MLX, so it runs on the service's MLX thread only. Per request: generate
(kept inside the output grammar unless SEGMENT_CONSTRAINED=false), parse the tokens into objects
as they arrive, decode each object's mask the moment its codes are complete, and yield it; then
one record with the raw text and the timings.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from app.config import Settings
from app.model.demo import demo_objects
from app.model.feature_cache import FeatureCache
from app.model.grammar import FOLLOW_THE_MODEL, OutputGrammar
from app.model.messages import ModelEvent, ModelOutput, ModelRequest
from app.model.paligemma import Generation, LogitsProcessor, PaliGemma
from app.model.vae import MaskDecoder
from app.steps.objects import decode_objects
from app.steps.prompts import split_task_prompt
from app.steps.tokens import ObjectParser, ParsedObject

log = logging.getLogger(__name__)

ProcessorsFactory = Callable[[], Sequence[LogitsProcessor]]


class Runner:
    """`logits_processors` is a test seam: a factory of processors (e.g. one that forces a known
    output) that run before the output grammar on every request."""

    def __init__(
        self,
        name: str,
        paligemma: PaliGemma,
        decoder: MaskDecoder,
        *,
        constrained: bool,
        random_weights: bool,
        logits_processors: ProcessorsFactory | None = None,
    ) -> None:
        self.name = name
        self.paligemma = paligemma
        self.decoder = decoder
        self.constrained = constrained
        self.random_weights = random_weights
        self._logits_processors = logits_processors

    @classmethod
    def load(
        cls,
        name: str,
        model_dir: Path,
        settings: Settings,
        *,
        random_weights: bool,
        logits_processors: ProcessorsFactory | None = None,
    ) -> Runner:
        """Read the weights (on the device the caller made MLX's default) and warm up."""
        if random_weights:
            log.warning("DEMO MODEL: %s has random weights; outputs are meaningless", model_dir)
        cache: FeatureCache[Any] = FeatureCache(
            max_entries=settings.image_cache_entries,
            max_bytes=settings.image_cache_mb * 1024 * 1024,
        )
        runner = cls(
            name,
            PaliGemma.load(model_dir, dtype=settings.dtype, feature_cache=cache),
            MaskDecoder.load(settings.vae_path),
            constrained=settings.constrained,
            random_weights=random_weights,
            logits_processors=logits_processors,
        )
        # Building the modules drew random initial weights that the checkpoint's replaced
        # unevaluated; every draw split MLX's global random key lazily, and the key keeps that
        # chain of splits until it is evaluated: ~0.2 MB per load of the tiny model (MBs for
        # the real one), held for good by a service that never samples.
        mx.eval(mx.random.state)
        if settings.warmup:
            runner.warm_up()
        return runner

    def warm_up(self) -> None:
        """One real generation and one mask decode, so the first request pays no compile cost."""
        self.paligemma.generate(
            Image.new("RGB", (64, 64), (128, 128, 128)), "segment object", max_new_tokens=4
        )
        self.decoder.decode(np.zeros((1, 16), dtype=np.int32))

    def close(self) -> None:
        """Drop the weights and MLX's buffer cache, so the memory goes back to the system."""
        del self.paligemma, self.decoder
        gc.collect()
        mx.clear_cache()

    def grammar(self, task_prompt: str) -> OutputGrammar | None:
        """The output grammar for this prompt, or None when constraining is off. The demo
        model's object policy is chosen here, and only here."""
        if not self.constrained:
            return None
        task, classes = split_task_prompt(task_prompt)
        policy = demo_objects(len(classes)) if self.random_weights else FOLLOW_THE_MODEL
        return OutputGrammar(self.paligemma.vocabulary, task=task, classes=classes, policy=policy)

    def run(self, request: ModelRequest, cancelled: Callable[[], bool]) -> Iterator[ModelEvent]:
        """Each object as soon as the output completes it, its mask decoded; then the record.

        Streamed or not, every request takes this one path, so the answers are the same.
        """
        parser = ObjectParser()
        decoding_s = 0.0
        generation: Generation | None = None

        def decoded(parsed: list[ParsedObject]) -> Iterator[ModelEvent]:
            nonlocal decoding_s
            for obj in parsed:
                started = time.perf_counter()
                [done] = decode_objects([obj], self.decoder)
                decoding_s += time.perf_counter() - started
                yield done

        for item in self.paligemma.stream(
            request.image,
            request.task_prompt,
            max_new_tokens=request.max_new_tokens,
            logits_processors=self._logits_processors() if self._logits_processors else (),
            grammar=self.grammar(request.task_prompt),
            cancelled=cancelled,
        ):
            if isinstance(item, Generation):
                generation = item
            else:
                yield from decoded(parser.feed(item))
        yield from decoded(parser.finish())
        assert generation is not None, "PaliGemma.stream ends with its Generation"
        yield ModelOutput(
            text=generation.text,
            timings_ms={**generation.timings_ms, "decode_masks": decoding_s * 1000},
            model=self.name,
        )
