"""What the worker runs: a backend of loaded models, each with its running batch.

The real one is app.runtime.pool (its models' runners); tests pass a fake with queued replies.
No MLX here: the worker imports these without importing MLX.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from app.model.messages import ModelEvent, ModelRequest
from app.runtime.catalog import Checkpoint

Keyed = tuple[Hashable, ModelEvent]  # an event, and the key of the request it belongs to


@dataclass(frozen=True)
class BackendInfo:
    """What the backend reports about itself once the default model is found."""

    device: str  # "gpu" or "cpu"
    random_weights: bool  # the default model is the random-weight demo


class ModelBatch(Protocol):
    """One loaded model's running batch; events come back keyed by the key given to `start`."""

    @property
    def active(self) -> int: ...

    def start(self, key: Hashable, request: ModelRequest) -> list[Keyed]:
        """Prefill the request and add it to the batch."""
        ...

    def step(self) -> list[Keyed]:
        """One token more for every request in the batch."""
        ...

    def drop(self, key: Hashable) -> None:
        """The request leaves the batch now."""
        ...


class Backend(Protocol):
    """Loads, batches, unloads; only ever called on the worker thread (`loaded_models` and
    `checkpoint` from any thread)."""

    name: str  # the default model's id

    def prepare(self) -> BackendInfo:
        """Choose the device and check the default model is there to load, reading no weights
        (domain errors otherwise: 503 not installed or not whole)."""
        ...

    def load(self) -> BackendInfo:
        """Load the default model, at start-up (SEGMENT_PRELOAD)."""
        ...

    def unload(self) -> None:
        """Free every model's memory; `batch` loads what it needs again."""
        ...

    def loaded_models(self) -> list[str]:
        """The models in memory now."""
        ...

    def checkpoint(self, model_id: str | None) -> Checkpoint:
        """The installed checkpoint a request names (None: the default), from its files alone,
        without loading it. Domain errors (400 unknown, 503 broken) otherwise."""
        ...

    def batch(self, model_id: str) -> tuple[ModelBatch, float | None]:
        """The model's batch, loaded first if it was not in memory (ms that took)."""
        ...
