"""The image-feature cache and the dtype policy change speed, never answers."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from app.model.dtype_policy import apply_dtype_policy, choose_float32
from app.model.feature_cache import FeatureCache
from app.model.generation import generate
from app.model.paligemma import PaliGemma

GB = 1024**3


def noise(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def generated(model: PaliGemma, image: Image.Image, prompt: str) -> list[tuple[str, float | None]]:
    return [(p.text, p.prob) for p in generate(model, image, prompt, max_new_tokens=12).pieces]


@pytest.fixture(scope="module")
def cached(tiny_model_dir: Path) -> PaliGemma:
    return PaliGemma.load(tiny_model_dir, feature_cache=FeatureCache(4, 64 * 1024 * 1024))


@pytest.fixture(scope="module")
def uncached(tiny_model_dir: Path) -> PaliGemma:
    return PaliGemma.load(tiny_model_dir)


def test_second_prompt_on_the_same_image_skips_the_vision_tower(cached: PaliGemma) -> None:
    image = noise(1)
    first = generate(cached, image, "segment cat", max_new_tokens=4)
    second = generate(cached, image, "detect dog", max_new_tokens=4)
    assert cached.feature_cache.hits >= 1 and len(cached.feature_cache) >= 1
    assert second.timings_ms["vision"] < first.timings_ms["vision"]


def test_cache_does_not_change_outputs(cached: PaliGemma, uncached: PaliGemma) -> None:
    image = noise(2)
    reference = generated(uncached, image, "segment cat ; dog")
    assert generated(cached, image, "segment cat ; dog") == reference  # miss
    assert generated(cached, image, "segment cat ; dog") == reference  # hit
    assert generated(cached, noise(3), "segment cat ; dog") != reference  # other image


def test_disabled_cache_keeps_nothing(uncached: PaliGemma) -> None:
    generate(uncached, noise(4), "segment cat", max_new_tokens=2)
    assert len(uncached.feature_cache) == 0


def test_image_is_resized_to_the_model_input_once(uncached: PaliGemma) -> None:
    big = noise(5).resize((1600, 1200))
    small = big.resize(uncached.input_size, Image.Resampling.BICUBIC)
    a = uncached.prepare(big, "segment cat")["pixel_values"]
    b = uncached.prepare(small, "segment cat")["pixel_values"]
    assert mx.array_equal(a, b)


@pytest.mark.parametrize(
    ("policy", "device", "widened", "memory", "float32"),
    [
        ("auto", "cpu", 12 * GB, 24 * GB, True),
        ("auto", "cpu", 20 * GB, 24 * GB, False),  # would not fit comfortably
        ("auto", "gpu", 1 * GB, 64 * GB, False),  # Metal keeps half precision
        ("float32", "gpu", 1 * GB, 64 * GB, True),
        ("checkpoint", "cpu", 1 * GB, 64 * GB, False),
    ],
)
def test_dtype_decision(policy: str, device: str, widened: int, memory: int, float32: bool) -> None:
    assert choose_float32(policy, device, widened, memory) is float32  # type: ignore[arg-type]


def test_bfloat16_weights_widened_to_float32_give_the_same_greedy_output(
    tiny_model_dir: Path,
) -> None:
    half = PaliGemma.load(tiny_model_dir, dtype="checkpoint")
    half.module.set_dtype(mx.bfloat16)
    in_half = [text for text, _ in generated(half, noise(6), "segment cat")]
    assert apply_dtype_policy(half.module, "auto", "cpu") == "float32"
    assert half.module.language_model.model.embed_tokens.weight.dtype == mx.float32
    in_float32 = [text for text, _ in generated(half, noise(6), "segment cat")]
    assert in_float32 == in_half
    assert apply_dtype_policy(half.module, "auto", "cpu").startswith("checkpoint (no half")


@pytest.mark.parametrize("prompt", ["segment cat", "detect left wheel ; tyre"])
def test_prepare_equals_the_processor(uncached: PaliGemma, prompt: str) -> None:
    image = noise(7).resize(uncached.input_size)
    ours = uncached.prepare(image, prompt)
    ours_again = uncached.prepare(image, prompt)  # from the prompt cache
    batch = uncached.processor(images=[image], text=[f"<image>{prompt}"], return_tensors="np")
    for inputs in (ours, ours_again):
        assert np.array_equal(np.asarray(inputs["input_ids"]), np.asarray(batch["input_ids"]))
        assert np.array_equal(np.asarray(inputs["mask"]), np.asarray(batch["attention_mask"]))
        assert np.array_equal(np.asarray(inputs["pixel_values"]), np.asarray(batch["pixel_values"]))


def test_quantized_checkpoint_runs_and_widens(tiny_model_dir: Path) -> None:
    """The default checkpoint is 8-bit: quantized layers and embedding (whose `weight` is packed
    uint32) must work with the feature path and survive the float32 policy."""
    import mlx.nn as nn

    model = PaliGemma.load(tiny_model_dir, feature_cache=FeatureCache(2, 1 << 26))
    model.module.set_dtype(mx.bfloat16)
    nn.quantize(
        model.module,
        group_size=64,
        bits=8,
        class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % 64 == 0,
    )
    assert isinstance(model.module.language_model.model.embed_tokens, nn.QuantizedEmbedding)
    quantized = [text for text, _ in generated(model, noise(8), "segment cat")]
    assert apply_dtype_policy(model.module, "auto", "cpu") == "float32"
    assert [text for text, _ in generated(model, noise(8), "segment cat")] == quantized
