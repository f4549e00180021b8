"""What crosses the MLX thread's boundary, both ways: plain Python and numpy values only.

    ModelRequest  ->  the MLX thread  ->  DecodedObject, DecodedObject, ..., ModelOutput

No MLX here: the worker and the pipeline import these without importing MLX.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from app.steps.objects import DecodedObject

__all__ = ["DecodedObject", "ModelEvent", "ModelOutput", "ModelRequest"]


@dataclass(frozen=True)
class ModelRequest:
    image: Image.Image  # upright RGB at the model's input size
    task_prompt: str  # "segment cat ; dog"
    max_new_tokens: int
    model_id: str  # the installed checkpoint to run


@dataclass(frozen=True)
class ModelOutput:
    """The record that ends a request's stream, after its last object."""

    text: str  # the model's raw output
    timings_ms: dict[str, float]  # (load,) preprocess, vision, generate, decode_masks
    model: str  # the checkpoint that answered
    # prompt: tokens read (image tokens included); generated: written, the stop not counted
    tokens: dict[str, int] = field(default_factory=dict)


ModelEvent = DecodedObject | ModelOutput
