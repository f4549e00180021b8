"""The one resident model: loaded, warmed and run on one MLX worker thread behind a bounded queue.

MLX streams are thread-local (mlx >= 0.31), so loading, warm-up, generation and mask decoding all
happen on `self._worker`; routes await futures and only plain Python/numpy values come back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from app.config import Settings
from app.errors import Busy, Cancelled, NotReady, TimedOut
from app.feature_cache import FeatureCache
from app.paligemma import LogitsProcessor, PaliGemma, device_name
from app.segmentation import decode_masks
from app.tokens import ParsedObject, parse_pieces
from app.vae import MaskDecoder

log = logging.getLogger(__name__)

State = Literal["loading", "ok", "error"]
ProcessorsFactory = Callable[[], Sequence[LogitsProcessor]]


@dataclass(frozen=True)
class Inference:
    """Everything the worker produced for one request; plain values only."""

    prompt: str
    text: str
    objects: list[ParsedObject]
    raw_masks: np.ndarray  # [n_with_codes, 64, 64] float32, raw decoder output
    prompt_tokens: int
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class EngineStatus:
    state: State
    reason: str | None
    model: str
    device: str | None
    loaded_at: datetime | None
    requests_served: int
    queued: int
    random_weights: bool


def is_random_weights(model_dir: Path) -> bool:
    """The tiny demo model (scripts/make_tiny_model.py) marks its config.json as random."""
    config = json.loads((model_dir / "config.json").read_text())
    return bool(config.get("random_weights", False))


class Engine:
    """Owns the model, the mask decoder and the worker thread; `infer` is the only way in."""

    def __init__(
        self, settings: Settings, *, logits_processors: ProcessorsFactory | None = None
    ) -> None:
        self.settings = settings
        self._logits_processors = logits_processors
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-worker")
        self._state: State = "loading"
        self._reason: str | None = "loading the model"
        self._device: str | None = None
        self._random_weights = False
        self._loaded_at: datetime | None = None
        self._served = 0
        self._pending = 0  # admitted requests not yet finished (queued + running)
        self._cancel_events: set[threading.Event] = set()
        self._model: PaliGemma | None = None
        self._decoder: MaskDecoder | None = None
        self._loading: asyncio.Future[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> asyncio.Future[None]:
        """Begin loading on the worker; returns at once so /health can answer 503 meanwhile."""
        if self._loading is None:
            self._loading = asyncio.wrap_future(self._worker.submit(self._load))
        return self._loading

    async def wait_ready(self) -> EngineStatus:
        """Wait for the load to finish (successfully or not) and report how it went."""
        await self.start()
        return self.status()

    def abandon_all(self) -> None:
        """Stop taking work; queued and running jobs stop between tokens and answer 503.

        Called when a graceful shutdown's drain time is up, while their requests can still
        be answered, and again by `close`.
        """
        self._state, self._reason = "error", "shutting down"
        for event in list(self._cancel_events):
            event.set()

    async def close(self) -> None:
        """Abandon all jobs and release the worker thread."""
        self.abandon_all()
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The model's image input (width, height) once loaded; decoding needs no more pixels."""
        return self._model.input_size if self._model is not None else None

    def status(self) -> EngineStatus:
        return EngineStatus(
            state=self._state,
            reason=self._reason,
            model=self.settings.model,
            device=self._device,
            loaded_at=self._loaded_at,
            requests_served=self._served,
            queued=self._pending,
            random_weights=self._random_weights,
        )

    def _load(self) -> None:
        try:
            started = time.perf_counter()
            self._load_models()
            self._loaded_at = datetime.now(UTC)
            self._state, self._reason = "ok", None
            log.info(
                "model %s ready on %s in %.1f s",
                self.settings.model,
                self._device,
                time.perf_counter() - started,
            )
        except Exception as exc:
            self._state, self._reason = "error", str(exc) or exc.__class__.__name__
            log.exception("model failed to load: %s", self._reason)

    def _load_models(self) -> None:
        model_dir, vae_path = self.settings.model_path(), self.settings.vae_path
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"Model {self.settings.model!r} not found (looked in {model_dir}). Run "
                "`make models` to download it, or `make demo` to try a tiny random model."
            )
        self._random_weights = is_random_weights(model_dir)
        if self._random_weights:
            log.warning("DEMO MODEL: %s has random weights; outputs are meaningless", model_dir)
        self._device = device_name()
        cache: FeatureCache[Any] = FeatureCache(
            max_entries=self.settings.image_cache_entries,
            max_bytes=self.settings.image_cache_mb * 1024 * 1024,
        )
        self._model = PaliGemma.load(model_dir, dtype=self.settings.dtype, feature_cache=cache)
        self._decoder = MaskDecoder.load(vae_path)
        if self.settings.warmup:
            self._warm_up()

    def _warm_up(self) -> None:
        """One real generation and one mask decode, so the first request pays no compile cost."""
        assert self._model is not None and self._decoder is not None
        self._model.generate(
            Image.new("RGB", (64, 64), (128, 128, 128)), "segment object", max_new_tokens=4
        )
        self._decoder.decode(np.zeros((1, 16), dtype=np.int32))

    # -- requests ----------------------------------------------------------------------------
    async def infer(self, image: Image.Image, prompt: str, max_new_tokens: int) -> Inference:
        """Run one request on the worker: generate, parse, decode masks. Bounded wait and time."""
        if self._state != "ok":
            raise NotReady(self._not_ready_detail())
        if self._pending > self.settings.max_queue:
            raise Busy(
                f"{self._pending} requests are already waiting; try again shortly.",
                retry_after_s=2,
            )
        cancel = threading.Event()
        self._pending += 1
        self._cancel_events.add(cancel)
        try:
            job = self._worker.submit(self._run, image, prompt, max_new_tokens, cancel)
            result = await asyncio.wait_for(
                asyncio.wrap_future(job), timeout=self.settings.request_timeout_s
            )
        except TimeoutError as exc:
            cancel.set()
            raise TimedOut(
                f"The request took longer than {self.settings.request_timeout_s:g} s "
                "(SEGMENT_REQUEST_TIMEOUT_S); try a smaller max_new_tokens or fewer classes."
            ) from exc
        except asyncio.CancelledError:  # the client went away: stop generating for it
            cancel.set()
            raise
        except Cancelled as exc:
            raise NotReady("The service is shutting down; retry once it is back.") from exc
        finally:
            self._pending -= 1
            self._cancel_events.discard(cancel)
        self._served += 1
        return result

    def _not_ready_detail(self) -> str:
        if self._state == "loading":
            return "The model is still loading; retry in a few seconds (GET /health says when)."
        return f"The model is not available: {self._reason}"

    def _run(
        self, image: Image.Image, prompt: str, max_new_tokens: int, cancel: threading.Event
    ) -> Inference:
        if cancel.is_set():
            raise Cancelled("abandoned before it started")
        assert self._model is not None and self._decoder is not None
        processors = self._logits_processors() if self._logits_processors else ()
        generation = self._model.generate(
            image,
            prompt,
            max_new_tokens=max_new_tokens,
            logits_processors=processors,
            cancelled=cancel.is_set,
        )
        started = time.perf_counter()
        objects = parse_pieces(generation.pieces)
        raw_masks = decode_masks(objects, self._decoder)
        return Inference(
            prompt=prompt,
            text=generation.text,
            objects=objects,
            raw_masks=raw_masks,
            prompt_tokens=generation.prompt_tokens,
            timings_ms={
                **generation.timings_ms,
                "decode_masks": (time.perf_counter() - started) * 1000,
            },
        )
