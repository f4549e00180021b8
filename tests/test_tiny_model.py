"""The tiny PaliGemma 2 builder: loads in mlx-vlm (and transformers), real tokenizer layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from app.model.tiny import build_tiny_model

LOCS = [f"<loc{i:04d}>" for i in range(1024)]
SEGS = [f"<seg{i:03d}>" for i in range(128)]
# One object as PaliGemma writes it: 4 locs, 16 seg codes, label; objects split by " ; ".
MODEL_OUTPUT = (
    "<loc0012><loc0034><loc0567><loc0890>"
    + "".join(f"<seg{c:03d}>" for c in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 127))
    + " cat ; <loc0000><loc0100><loc1023><loc1022> dog"
)


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path) -> dict[str, Any]:
    return json.loads((tiny_model_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> tuple[Any, Any]:
    """(model, processor) as the service loads them."""
    from mlx_vlm.utils import load

    return load(str(tiny_model_dir))


def test_directory_has_real_checkpoint_files(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model.safetensors",
        "vae-oid.npz",
    } <= names


def test_config_keeps_the_top_level_hidden_size_trap(config: dict[str, Any]) -> None:
    # Real PaliGemma 2 configs carry PaliGemma 1's top-level hidden_size; the engine must cope.
    assert config["hidden_size"] != config["text_config"]["hidden_size"]
    assert config["projection_dim"] == config["text_config"]["hidden_size"]
    assert config["text_config"]["num_image_tokens"] == 256


def test_weights_use_original_hf_names_and_torch_layout(tiny_model_dir: Path) -> None:
    weights = load_file(tiny_model_dir / "model.safetensors")
    prefixes = (
        "vision_tower.vision_model.",
        "multi_modal_projector.linear.",
        "language_model.model.",
    )
    assert all(k.startswith(prefixes) for k in weights)
    assert not any("lm_head" in k for k in weights)  # tied to embed_tokens
    patch = weights["vision_tower.vision_model.embeddings.patch_embedding.weight"]
    assert patch.shape == (32, 3, 14, 14)  # PyTorch (O, C, kH, kW); mlx-vlm transposes on load
    assert all(w.dtype == np.float32 for w in weights.values())


def test_builder_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    other = build_tiny_model(tmp_path / "other", seed=1)
    model = (tiny_model_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == model
    assert (other / "model.safetensors").read_bytes() != model
    assert (again / "tokenizer.json").read_bytes() == (
        tiny_model_dir / "tokenizer.json"
    ).read_bytes()


def test_tokenizer_vocab_layout(loaded: tuple[Any, Any], config: dict[str, Any]) -> None:
    tok = loaded[1].tokenizer
    vocab_size = config["vocab_size"]
    assert len(tok) == vocab_size == config["text_config"]["vocab_size"]
    loc_ids = tok.convert_tokens_to_ids(LOCS)
    seg_ids = tok.convert_tokens_to_ids(SEGS)
    assert loc_ids == list(range(loc_ids[0], loc_ids[0] + 1024))
    assert seg_ids == list(range(loc_ids[-1] + 1, loc_ids[-1] + 1 + 128))
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id == config["image_token_index"] == vocab_size - 1 == seg_ids[-1] + 1
    assert tok.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>"]) == [0, 1, 2]


def test_tokenizer_round_trips_prompts_and_outputs(loaded: tuple[Any, Any]) -> None:
    tok = loaded[1].tokenizer
    ids = tok.encode(MODEL_OUTPUT, add_special_tokens=False)
    # Atomic loc/seg: 4 locs, 16 segs, "▁cat" "▁" ";" "▁", 4 locs, "▁dog".
    assert len(ids) == 4 + 16 + 4 + 4 + 1
    assert tok.decode(ids, skip_special_tokens=True) == MODEL_OUTPUT  # loc/seg are not special
    wrapped = [tok.bos_token_id, *ids, tok.eos_token_id, tok.convert_tokens_to_ids("<image>")]
    assert tok.decode(wrapped, skip_special_tokens=True) == MODEL_OUTPUT
    prompt = tok.encode("segment cat ; dog", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(prompt) == ["segment", "▁cat", "▁", ";", "▁dog"]
    assert tok.decode(prompt) == "segment cat ; dog"
    odd = "détecte 🐱\n<loc0001>x"  # byte fallback covers anything outside the tiny vocab
    assert tok.decode(tok.encode(odd, add_special_tokens=False)) == odd


def test_mlx_vlm_loads_and_generates_greedily(
    loaded: tuple[Any, Any], config: dict[str, Any]
) -> None:
    import mlx.core as mx
    from mlx_vlm.generate import generate_step
    from PIL import Image

    model, processor = loaded
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    inputs = processor(images=image, text="segment cat", return_tensors="np")
    input_ids = mx.array(inputs["input_ids"])
    assert int((input_ids == config["image_token_index"]).sum()) == 256
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 224, 224)
    steps = generate_step(
        input_ids,
        model,
        mx.array(inputs["pixel_values"]),
        mx.array(inputs["attention_mask"]),
        temperature=0.0,
        max_tokens=4,
    )
    tokens = [int(token) for token, _ in steps]
    assert len(tokens) == 4
    assert all(0 <= t < config["vocab_size"] for t in tokens)


def test_transformers_loads_without_missing_or_unexpected_keys(tiny_model_dir: Path) -> None:
    pytest.importorskip("torch")
    from transformers import PaliGemmaForConditionalGeneration

    loaded: Any = PaliGemmaForConditionalGeneration.from_pretrained(
        tiny_model_dir, output_loading_info=True
    )
    info = loaded[1]  # (model, loading info)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
