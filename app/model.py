"""The model side: PaliGemma plus the mask decoder, loaded, warmed up and run one request at a time.

Everything here touches MLX, so the worker calls it on its single thread only. Per request:
generate (constrained to the output grammar unless SEGMENT_CONSTRAINED=false), parse the tokens
into objects, and decode all their masks in one MLX call.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from app.config import Settings
from app.constrained import OutputGrammar
from app.device import gpu_backend, use_device
from app.feature_cache import FeatureCache
from app.keep_alive import keep_alive_seconds
from app.paligemma import LogitsProcessor, PaliGemma
from app.prompts import split_task_prompt
from app.segmentation import DecodedObject, decode_objects
from app.tokens import ObjectParser, ParsedObject
from app.vae import MaskDecoder
from app.worker import ModelInfo, ModelOutput, ModelRequest, Worker

log = logging.getLogger(__name__)

ProcessorsFactory = Callable[[], Sequence[LogitsProcessor]]


def is_random_weights(model_dir: Path) -> bool:
    """The tiny demo model (scripts/make_tiny_model.py) marks its config.json as random."""
    config = json.loads((model_dir / "config.json").read_text())
    return bool(config.get("random_weights", False))


class SegmentationModel:
    """Owns one PaliGemma checkpoint and the mask decoder.

    `logits_processors` is a test seam: a factory of processors (e.g. one that forces a known
    output) that run before the output grammar on every request.
    """

    def __init__(
        self, settings: Settings, *, logits_processors: ProcessorsFactory | None = None
    ) -> None:
        self.settings = settings
        self.name = settings.model
        self._logits_processors = logits_processors
        self._model: PaliGemma | None = None
        self._decoder: MaskDecoder | None = None
        self._random_weights = False

    def load(self) -> ModelInfo:
        model_dir, vae_path = self.settings.model_path(), self.settings.vae_path
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"Model {self.settings.model!r} not found (looked in {model_dir}). Run "
                "`make models` to download it, or `make demo` to try a tiny random model."
            )
        device = use_device(self.settings.device, sys.platform)
        backend = gpu_backend() if device == "gpu" else "cpu"
        log.info(
            "MLX runs on the %s (%s; SEGMENT_DEVICE=%s)", device, backend, self.settings.device
        )
        self._random_weights = is_random_weights(model_dir)
        if self._random_weights:
            log.warning("DEMO MODEL: %s has random weights; outputs are meaningless", model_dir)
        cache: FeatureCache[Any] = FeatureCache(
            max_entries=self.settings.image_cache_entries,
            max_bytes=self.settings.image_cache_mb * 1024 * 1024,
        )
        self._model = PaliGemma.load(model_dir, dtype=self.settings.dtype, feature_cache=cache)
        self._decoder = MaskDecoder.load(vae_path)
        if self.settings.warmup:
            self._warm_up()
        return ModelInfo(
            device=device,
            input_size=self._model.input_size,
            random_weights=self._random_weights,
        )

    def unload(self) -> None:
        """Drop the weights and MLX's buffer cache, so the memory goes back to the system."""
        self._model = self._decoder = None
        gc.collect()
        mx.clear_cache()

    def _warm_up(self) -> None:
        """One real generation and one mask decode, so the first request pays no compile cost."""
        assert self._model is not None and self._decoder is not None
        self._model.generate(
            Image.new("RGB", (64, 64), (128, 128, 128)), "segment object", max_new_tokens=4
        )
        self._decoder.decode(np.zeros((1, 16), dtype=np.int32))

    def grammar(self, task_prompt: str) -> OutputGrammar | None:
        """The output grammar for this prompt, or None when constraining is off."""
        if not self.settings.constrained:
            return None
        assert self._model is not None
        task, classes = split_task_prompt(task_prompt)
        return OutputGrammar(
            self._model.vocabulary,
            task=task,
            classes=classes,
            random_weights=self._random_weights,
        )

    def run(
        self,
        request: ModelRequest,
        cancelled: Callable[[], bool],
        on_object: Callable[[DecodedObject], None] = lambda obj: None,
    ) -> ModelOutput:
        """Generate; each object is parsed, its mask decoded and handed to `on_object` the
        moment the output completes it, so objects can be streamed while generation goes on.
        Streamed or not, every request takes this one path, so the answers are identical."""
        assert self._model is not None and self._decoder is not None
        decoder = self._decoder
        parser = ObjectParser()
        objects: list[DecodedObject] = []
        decoding_s = 0.0

        def completed(parsed: list[ParsedObject]) -> None:
            nonlocal decoding_s
            for obj in parsed:
                started = time.perf_counter()
                [decoded] = decode_objects([obj], decoder)
                decoding_s += time.perf_counter() - started
                objects.append(decoded)
                on_object(decoded)

        generation = self._model.generate(
            request.image,
            request.task_prompt,
            max_new_tokens=request.max_new_tokens,
            logits_processors=self._logits_processors() if self._logits_processors else (),
            grammar=self.grammar(request.task_prompt),
            cancelled=cancelled,
            on_piece=lambda piece: completed(parser.feed(piece)),
        )
        completed(parser.finish())
        timings = dict(generation.timings_ms)
        timings["generate"] -= decoding_s * 1000  # masks decoded between tokens count apart
        return ModelOutput(
            text=generation.text,
            objects=objects,
            timings_ms={**timings, "decode_masks": decoding_s * 1000},
        )


def create_worker(
    settings: Settings, *, logits_processors: ProcessorsFactory | None = None
) -> Worker:
    """The worker with the real model side, as the service, the CLI and `Segmenter` use it."""
    return Worker(
        SegmentationModel(settings, logits_processors=logits_processors),
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        keep_alive_s=keep_alive_seconds(settings.keep_alive),
    )
