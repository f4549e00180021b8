"""The model side: PaliGemma plus the mask decoder, loaded, warmed up and run one request at a time.

Everything here touches MLX, so the worker calls it on its single thread only. Per request:
generate (constrained to the output grammar unless SEGMENT_CONSTRAINED=false), parse the tokens
into objects, and decode all their masks in one MLX call.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from app.config import Settings
from app.errors import NotReady
from app.keep_alive import keep_alive_seconds
from app.model.feature_cache import FeatureCache
from app.model.grammar import OutputGrammar
from app.model.paligemma import LogitsProcessor, PaliGemma
from app.model.vae import MaskDecoder
from app.runtime.catalog import find_model, is_random_weights
from app.runtime.device import gpu_backend, use_device
from app.runtime.download import is_complete
from app.runtime.worker import ModelInfo, ModelOutput, ModelRequest, Worker
from app.steps.objects import DecodedObject, decode_objects
from app.steps.prompts import split_task_prompt
from app.steps.tokens import ObjectParser, ParsedObject

log = logging.getLogger(__name__)

ProcessorsFactory = Callable[[], Sequence[LogitsProcessor]]


class SegmentationModel:
    """Owns one PaliGemma checkpoint and the mask decoder.

    `logits_processors` is a test seam: a factory of processors (e.g. one that forces a known
    output) that run before the output grammar on every request.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        logits_processors: ProcessorsFactory | None = None,
        name: str | None = None,
        model_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or settings.model
        self.model_dir = model_dir or settings.model_path()
        self._logits_processors = logits_processors
        self._model: PaliGemma | None = None
        self._decoder: MaskDecoder | None = None
        self._random_weights = False

    def load(self) -> ModelInfo:
        model_dir, vae_path = self.model_dir, self.settings.vae_path
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"Model {self.name!r} not found (looked in {model_dir}). Run "
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

    def loaded_models(self) -> list[str]:
        return [self.name] if self._model is not None else []

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
        Streamed or not, every request takes this one path, so the answers are identical.
        An unloaded model (idle, or never used) is loaded first; `load` in the timings."""
        loading_ms = self._load_now() if self._model is None else None
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
        if loading_ms is not None:
            timings = {"load": loading_ms, **timings}
        return ModelOutput(
            text=generation.text,
            objects=objects,
            timings_ms={**timings, "decode_masks": decoding_s * 1000},
            model=self.name,
        )

    def _load_now(self) -> float:
        """Load for the request at hand (after an idle unload or a swap); ms it took."""
        started = time.perf_counter()
        try:
            self.load()
        except Exception as exc:
            raise NotReady(f"The model {self.name!r} could not be loaded: {exc}") from exc
        seconds = time.perf_counter() - started
        log.info("model %s loaded for a request in %.1f s", self.name, seconds)
        return seconds * 1000


class ModelPool:
    """Every installed checkpoint behind one worker: a request's model_id picks one, loaded on
    demand; at most SEGMENT_MAX_LOADED_MODELS stay in memory, the least recently used leaving
    first. Requests run in arrival order (one MLX thread), so a swap starves nobody."""

    def __init__(
        self, settings: Settings, *, logits_processors: ProcessorsFactory | None = None
    ) -> None:
        self.settings = settings
        self.name = settings.model
        self._logits_processors = logits_processors
        self._sides: OrderedDict[str, SegmentationModel] = OrderedDict()  # loaded, LRU first
        self._loaded_names: tuple[str, ...] = ()

    def load(self) -> ModelInfo:
        """The default model (SEGMENT_MODEL), at start-up."""
        side = SegmentationModel(self.settings, logits_processors=self._logits_processors)
        info = side.load()
        self._sides[self.name] = side
        self._note_loaded()
        return info

    def run(
        self,
        request: ModelRequest,
        cancelled: Callable[[], bool],
        on_object: Callable[[DecodedObject], None] = lambda obj: None,
    ) -> ModelOutput:
        side = self._side(request.model_id or self.name)
        try:
            return side.run(request, cancelled, on_object)
        finally:
            self._note_loaded()

    def unload(self) -> None:
        for side in self._sides.values():
            side.unload()
        self._sides.clear()
        self._note_loaded()

    def loaded_models(self) -> list[str]:
        """Safe from any thread: a tuple the worker thread replaces whole after each change."""
        return list(self._loaded_names)

    def _note_loaded(self) -> None:
        self._loaded_names = tuple(n for n, side in self._sides.items() if side.loaded_models())

    def _side(self, model_id: str) -> SegmentationModel:
        if model_id in self._sides:
            self._sides.move_to_end(model_id)
            return self._sides[model_id]
        installed = find_model(self.settings, model_id)
        if installed is not None and installed.id in self._sides:  # named by another alias
            return self._side(installed.id)
        if installed is None or not is_complete(installed.path):
            # Checked before anything is evicted: a broken request costs the others nothing.
            raise NotReady(
                f"The model {model_id!r} is not (completely) installed; "
                f"`make models SEGMENT_MODEL={model_id}` installs it."
            )
        while len(self._sides) >= self.settings.max_loaded_models:
            evicted, side = self._sides.popitem(last=False)
            side.unload()
            log.info("model %s unloaded to make room for %s", evicted, model_id)
        side = SegmentationModel(
            self.settings,
            logits_processors=self._logits_processors,
            name=installed.id,
            model_dir=installed.path,
        )
        self._sides[installed.id] = side  # loaded by its first run, which times it
        return side


def create_worker(
    settings: Settings, *, logits_processors: ProcessorsFactory | None = None
) -> Worker:
    """The worker with the real model side, as the service, the CLI and `Segmenter` use it."""
    return Worker(
        ModelPool(settings, logits_processors=logits_processors),
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        keep_alive_s=keep_alive_seconds(settings.keep_alive),
    )
