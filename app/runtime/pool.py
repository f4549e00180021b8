"""Every installed checkpoint behind one worker: a request's model_id picks one, loaded on
demand; at most SEGMENT_MAX_LOADED_MODELS stay in memory, the least recently used leaving
first. Requests run in arrival order (one MLX thread), so a swap starves nobody.

A checkpoint that cannot be loaded never costs the others: it is checked whole before anything
is evicted for it, and if loading still fails, what was evicted is loaded back.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict

from app.config import Settings, keep_alive_seconds
from app.errors import NotReady, ServiceError
from app.model.runner import ProcessorsFactory, Runner
from app.runtime.backend import BackendInfo
from app.runtime.catalog import Checkpoint, resolve
from app.runtime.device import gpu_backend, use_device
from app.runtime.worker import Worker

log = logging.getLogger(__name__)


class RunnerPool:
    """The worker's backend: loaded checkpoints by id, least recently used first; each
    checkpoint's Runner is the batch its requests decode in."""

    def __init__(
        self, settings: Settings, *, logits_processors: ProcessorsFactory | None = None
    ) -> None:
        self.settings = settings
        self.name = settings.model
        self._logits_processors = logits_processors
        self._runners: OrderedDict[str, Runner] = OrderedDict()
        self._loaded_names: tuple[str, ...] = ()
        self._device: str | None = None

    def prepare(self) -> BackendInfo:
        """Choose the device and check that the default model (SEGMENT_MODEL) is installed and
        whole, reading no weights: a domain error saying what to do otherwise."""
        checkpoint = resolve(self.settings, None)
        if not self.settings.vae_path.is_file():
            raise NotReady(
                f"The mask decoder is not installed (looked for {self.settings.vae_path}). "
                "Run `make models` to download it."
            )
        return BackendInfo(device=self._choose_device(), random_weights=checkpoint.random_weights)

    def load(self) -> BackendInfo:
        """Load the default model (at start-up when SEGMENT_PRELOAD is on)."""
        checkpoint = resolve(self.settings, None)
        if checkpoint.id not in self._runners:
            self._runners[checkpoint.id] = self._load(checkpoint)
            self._note_loaded()
        return BackendInfo(device=self._choose_device(), random_weights=checkpoint.random_weights)

    def batch(self, model_id: str) -> tuple[Runner, float | None]:
        """The model's runner (its batch), and the ms it took to load if it was not in memory.
        The worker asks only while no batch runs, so a swap never happens under one."""
        try:
            return self._runner(model_id)
        finally:
            self._note_loaded()

    def checkpoint(self, model_id: str | None) -> Checkpoint:
        return resolve(self.settings, model_id)

    def unload(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        self._note_loaded()

    def loaded_models(self) -> list[str]:
        """Safe from any thread: a tuple the worker thread replaces whole after each change."""
        return list(self._loaded_names)

    def _note_loaded(self) -> None:
        self._loaded_names = tuple(self._runners)

    def _runner(self, model_id: str) -> tuple[Runner, float | None]:
        """The runner for `model_id`, loaded (and timed, in ms) if it was not in memory."""
        if model_id in self._runners:
            self._runners.move_to_end(model_id)
            return self._runners[model_id], None
        checkpoint = resolve(self.settings, model_id)  # whole, or a 503 before any eviction
        if checkpoint.id in self._runners:  # named by another alias
            return self._runner(checkpoint.id)
        evicted = []
        while len(self._runners) >= self.settings.max_loaded_models:
            name, runner = self._runners.popitem(last=False)
            runner.close()
            evicted.append(name)
            log.info("model %s unloaded to make room for %s", name, checkpoint.id)
        self._note_loaded()
        started = time.perf_counter()
        try:
            runner = self._load(checkpoint)
        except Exception as exc:
            self._restore(evicted)
            detail = exc.detail if isinstance(exc, ServiceError) else str(exc)
            raise NotReady(f"The model {checkpoint.id!r} could not be loaded: {detail}") from exc
        self._runners[checkpoint.id] = runner
        self._note_loaded()
        seconds = time.perf_counter() - started
        log.info("model %s loaded for a request in %.1f s", checkpoint.id, seconds)
        return runner, seconds * 1000

    def _choose_device(self) -> str:
        """Once: the model, its streams and every request on one device."""
        if self._device is None:
            self._device = use_device(
                self.settings.device, sys.platform, self.settings.cpu_cache_mb
            )
            backend = gpu_backend() if self._device == "gpu" else "cpu"
            log.info(
                "MLX runs on the %s (%s; SEGMENT_DEVICE=%s)",
                self._device,
                backend,
                self.settings.device,
            )
        return self._device

    def _load(self, checkpoint: Checkpoint) -> Runner:
        self._choose_device()
        return Runner.load(
            checkpoint.id,
            checkpoint.path,
            self.settings,
            random_weights=checkpoint.random_weights,
            logits_processors=self._logits_processors,
        )

    def _restore(self, evicted: list[str]) -> None:
        """Load back what a failed swap evicted, so the failure costs only its own request."""
        for name in evicted:
            try:
                self._runners[name] = self._load(resolve(self.settings, name))
                log.info("model %s loaded back after a failed swap", name)
            except Exception:
                log.exception("model %s could not be loaded back", name)
        self._note_loaded()


def create_worker(
    settings: Settings,
    *,
    logits_processors: ProcessorsFactory | None = None,
    preload: bool | None = None,
) -> Worker:
    """The worker with the real backend, as the service, the CLI and `Segmenter` use it;
    `preload` overrides SEGMENT_PRELOAD (the CLI and `Segmenter` load at once)."""
    return Worker(
        RunnerPool(settings, logits_processors=logits_processors),
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        keep_alive_s=keep_alive_seconds(settings.keep_alive),
        max_batch=settings.max_batch,
        preload=settings.preload if preload is None else preload,
        load_retry_s=settings.load_retry_s,
    )
