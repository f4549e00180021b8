"""One loaded checkpoint: PaliGemma and the mask decoder, running a batch of requests.

Everything here touches MLX, so it runs on the service's MLX thread only. Per request: decode
(kept inside the output grammar unless SEGMENT_CONSTRAINED=false) together with the others in
the batch, parse its tokens into objects as they arrive, decode each object's mask the moment
its codes are complete; then one record with the raw text and the timings. Events come back
keyed by the caller's key for each request.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from app.config import Settings
from app.model.demo import DEMO_WARNING, demo_objects
from app.model.feature_cache import FeatureCache
from app.model.generation import Advance, Batch, LogitsProcessor, generate
from app.model.grammar import FOLLOW_THE_MODEL, OutputGrammar
from app.model.messages import ModelEvent, ModelOutput, ModelRequest
from app.model.paligemma import PaliGemma
from app.model.vae import MaskDecoder
from app.steps.objects import decode_objects
from app.steps.prompts import split_task_prompt
from app.steps.tokens import ObjectParser, ParsedObject

log = logging.getLogger(__name__)

ProcessorsFactory = Callable[[], Sequence[LogitsProcessor]]
Keyed = tuple[Hashable, ModelEvent]  # an event, and the key of the request it belongs to


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
        self._batch = Batch(paligemma)
        self._parsers: dict[Hashable, ObjectParser] = {}
        self._decoding_s: dict[Hashable, float] = {}

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
            log.warning(DEMO_WARNING, model_dir)
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
        generate(
            self.paligemma,
            Image.new("RGB", (64, 64), (128, 128, 128)),
            "segment object",
            max_new_tokens=4,
        )
        self.decoder.decode(np.zeros((1, 16), dtype=np.int32))

    def close(self) -> None:
        """Drop the weights (the batch holds them too) and MLX's buffer cache, so the memory
        goes back to the system."""
        del self.paligemma, self.decoder, self._batch
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

    # -- the batch ------------------------------------------------------------------------
    @property
    def active(self) -> int:
        """Sequences decoding now."""
        return len(self._batch)

    def start(self, key: Hashable, request: ModelRequest) -> list[Keyed]:
        """Prefill the request and add it to the running batch; what its first token gave."""
        self._parsers[key] = ObjectParser()
        self._decoding_s[key] = 0.0
        try:
            advance = self._batch.add(
                key,
                request.image,
                request.task_prompt,
                max_new_tokens=request.max_new_tokens,
                processors=self._logits_processors() if self._logits_processors else (),
                grammar=self.grammar(request.task_prompt),
            )
        except BaseException:
            self._forget(key)
            raise
        return self._events([advance])

    def step(self) -> list[Keyed]:
        """One token more for every request in the batch: each object the moment its output
        completes it, its mask decoded (all of this step's in one call), and for a request
        that ends, the record. Streamed or not, every request takes this one path."""
        return self._events(self._batch.step())

    def drop(self, key: Hashable) -> None:
        """The request's caller is gone: it leaves the batch now."""
        self._batch.drop(key)
        self._forget(key)

    def _events(self, advances: list[Advance]) -> list[Keyed]:
        completed: list[tuple[Hashable, ParsedObject]] = []
        for advance in advances:
            parser = self._parsers[advance.key]
            for piece in advance.pieces:
                completed += [(advance.key, obj) for obj in parser.feed(piece)]
            if advance.done is not None:
                completed += [(advance.key, obj) for obj in parser.finish()]
        started = time.perf_counter()
        decoded = decode_objects([obj for _, obj in completed], self.decoder)
        spent = time.perf_counter() - started
        events: list[Keyed] = []
        for (key, _), obj in zip(completed, decoded, strict=True):
            events.append((key, obj))
        for key in dict.fromkeys(key for key, _ in completed):
            self._decoding_s[key] += spent
        for advance in advances:
            if advance.done is not None:
                timings = dict(advance.done.timings_ms)
                timings["decode_masks"] = self._decoding_s[advance.key] * 1000
                done = advance.done
                output = ModelOutput(
                    text=done.text,
                    timings_ms=timings,
                    model=self.name,
                    tokens={"prompt": done.prompt_tokens, "generated": done.new_tokens},
                )
                events.append((advance.key, output))
                self._forget(advance.key)
        return events

    def _forget(self, key: Hashable) -> None:
        self._parsers.pop(key, None)
        self._decoding_s.pop(key, None)
