"""Build a tiny random-weight PaliGemma 2 (real architecture, toy sizes) plus a random VAE.

Why: the real checkpoint is gigabytes and cannot be downloaded in tests or CI. This directory has
the file layout, config keys, weight names, and tokenizer id order of a real PaliGemma 2 mix
checkpoint, so loading and decoding code tested on it works on the real one. No torch and no
network: numpy, safetensors and tokenizers only, in about a second.

    python -m app.model.tiny models/paligemma2-tiny [--seed 0] [--image-size 224]

`SEGMENT_MODEL=demo` (`make demo`) builds it on first use into the models directory
(app.runtime.catalog), marked `random_weights`.

`--image-size` gives the model another input size (448 like the mix-448 checkpoints: four
times the image tokens), so code that must take per-model facts from the right checkpoint can
be tested with two of them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from app.model.random_vae import write_random_vae

IMAGE_SIZE = 224
PATCH_SIZE = 14
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
# PaliGemma 2 inherited PaliGemma 1's top-level hidden_size (2048) although its Gemma 2 text tower
# is 2304 wide. mlx-vlm scales image features by 1/sqrt(top-level hidden_size), transformers by
# 1/sqrt(text_config.hidden_size). Kept different here ON PURPOSE so tests see the real trap.
TOP_LEVEL_HIDDEN_SIZE = 2048

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
# Words that get BPE merges, so prompts and labels tokenize like words rather than characters.
WORDS = (  # noqa: SIM905 (one string reads better than 42 quoted words)
    "cat dog car wheel person people man woman child bird horse tree sky road building window "
    "door hand face head table chair bottle cup book phone left right top bottom segment detect "
    "caption describe answer the of and in on with en"
).split()
PROMPT_STARTS = ["segment", "detect", "caption", "describe", "answer"]  # no "▁" at string start
BASE_VOCAB = 1024  # ids below the loc tokens (256000 in the real tokenizer)
LOC_TOKENS = [f"<loc{i:04d}>" for i in range(1024)]
SEG_TOKENS = [f"<seg{i:03d}>" for i in range(128)]
IMAGE_TOKEN = "<image>"
VOCAB_SIZE = BASE_VOCAB + len(LOC_TOKENS) + len(SEG_TOKENS) + 1  # <image> is the last id


def _vocab_and_merges(
    base_vocab: int, vocab_size: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Gemma's id order: specials, byte fallback, characters, word merges, <unusedN> filler,
    loc, seg, <image>, then filler up to `vocab_size` (the real embedding has 63 spare rows)."""
    pieces = SPECIAL + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["\n", "▁"] + [chr(c) for c in range(0x21, 0x7F)]  # printable ASCII; space is ▁
    merges: list[tuple[str, str]] = []
    # Left-to-right chains ("▁"+"c", "▁c"+"a", ...). All "▁" chains rank before bare ones, so a
    # bare merge such as "c"+"a" can never split "▁cat" in the middle.
    for word in [f"▁{w}" for w in WORDS] + PROMPT_STARTS:
        for end in range(2, len(word) + 1):
            if word[:end] not in pieces:
                pieces.append(word[:end])
                merges.append((word[: end - 1], word[end - 1]))
    assert len(pieces) < base_vocab, f"{len(pieces)} pieces do not fit below {base_vocab}"
    filler = base_vocab - len(pieces)
    pieces += [f"<unused{i}>" for i in range(filler)]
    pieces += [*LOC_TOKENS, *SEG_TOKENS, IMAGE_TOKEN]
    pieces += [f"<unused{i}>" for i in range(filler, filler + vocab_size - len(pieces))]
    assert len(pieces) == vocab_size == len(set(pieces))
    return {p: i for i, p in enumerate(pieces)}, merges


def build_tokenizer(base_vocab: int = BASE_VOCAB, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Gemma-style BPE with byte fallback; loc/seg are atomic non-special added tokens.

    Non-special, because the service decodes with `skip_special_tokens=True` and the loc/seg
    tokens carry the boxes and masks; `<image>` and the control tokens are special.
    """
    vocab, merges = _vocab_and_merges(base_vocab, vocab_size)
    tok = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    tok.add_tokens(
        [AddedToken(t, normalized=False, special=False) for t in LOC_TOKENS + SEG_TOKENS]
    )
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    return tok


def image_tokens(image_size: int) -> int:
    return (image_size // PATCH_SIZE) ** 2


def build_config(image_size: int = IMAGE_SIZE) -> dict[str, Any]:
    """config.json in the real checkpoint's layout (float32 here, bfloat16 there)."""
    text = {
        **TEXT,
        "model_type": "gemma2",
        "architectures": ["Gemma2ForCausalLM"],
        "vocab_size": VOCAB_SIZE,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh",
        # mlx-vlm's defaults for these are None: they must be explicit, as in the real config.
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "query_pre_attn_scalar": TEXT["head_dim"],
        "sliding_window": 4096,  # as real: longer than any prompt, so it never clips attention
        "layer_types": ["sliding_attention", "full_attention"] * (TEXT["num_hidden_layers"] // 2),
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "num_image_tokens": image_tokens(image_size),
        "torch_dtype": "float32",
    }
    vision = {
        **VISION,
        "model_type": "siglip_vision_model",
        "image_size": image_size,
        "patch_size": PATCH_SIZE,
        "num_channels": 3,
        "num_image_tokens": image_tokens(image_size),
        "num_positions": image_tokens(image_size),
        "projection_dim": TEXT["hidden_size"],
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
        "torch_dtype": "float32",
    }
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "hidden_size": TOP_LEVEL_HIDDEN_SIZE,  # != text hidden_size on purpose, see above
        "image_token_index": VOCAB_SIZE - 1,
        "projection_dim": TEXT["hidden_size"],
        "vocab_size": VOCAB_SIZE,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "dtype": "float32",
        # Read by the service, which then labels itself as a random-weight demo in logs and /health.
        "random_weights": True,
        "text_config": text,
        "vision_config": vision,
    }


def weight_shapes(
    text: dict[str, int] = TEXT,
    vision: dict[str, int] = VISION,
    vocab_size: int = VOCAB_SIZE,
    num_positions: int = (IMAGE_SIZE // PATCH_SIZE) ** 2,
    patch_size: int = PATCH_SIZE,
) -> dict[str, tuple[int, ...]]:
    """Original HF PaliGemma names and PyTorch layouts; no lm_head (tied to embed_tokens).

    The defaults are the tiny model's; scripts/real_size_model.py passes the real sizes.
    """
    vh, vi = vision["hidden_size"], vision["intermediate_size"]
    th, ti = text["hidden_size"], text["intermediate_size"]
    q_out = text["num_attention_heads"] * text["head_dim"]
    kv_out = text["num_key_value_heads"] * text["head_dim"]
    v = "vision_tower.vision_model."
    shapes: dict[str, tuple[int, ...]] = {
        v + "embeddings.patch_embedding.weight": (vh, 3, patch_size, patch_size),  # (O,C,kH,kW)
        v + "embeddings.patch_embedding.bias": (vh,),
        v + "embeddings.position_embedding.weight": (num_positions, vh),
        v + "post_layernorm.weight": (vh,),
        v + "post_layernorm.bias": (vh,),
        "multi_modal_projector.linear.weight": (th, vh),  # (out, in) like torch.nn.Linear
        "multi_modal_projector.linear.bias": (th,),
        "language_model.model.embed_tokens.weight": (vocab_size, th),
        "language_model.model.norm.weight": (th,),
    }
    for i in range(vision["num_hidden_layers"]):
        p = f"{v}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{p}self_attn.{name}.weight": (vh, vh), f"{p}self_attn.{name}.bias": (vh,)}
        for name in ("layer_norm1", "layer_norm2"):
            shapes |= {f"{p}{name}.weight": (vh,), f"{p}{name}.bias": (vh,)}
        shapes |= {f"{p}mlp.fc1.weight": (vi, vh), f"{p}mlp.fc1.bias": (vi,)}
        shapes |= {f"{p}mlp.fc2.weight": (vh, vi), f"{p}mlp.fc2.bias": (vh,)}
    for i in range(text["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q_out, th),
            p + "self_attn.k_proj.weight": (kv_out, th),
            p + "self_attn.v_proj.weight": (kv_out, th),
            p + "self_attn.o_proj.weight": (th, q_out),
            p + "mlp.gate_proj.weight": (ti, th),
            p + "mlp.up_proj.weight": (ti, th),
            p + "mlp.down_proj.weight": (th, ti),
        }
        for name in ("input", "post_attention", "pre_feedforward", "post_feedforward"):
            shapes[f"{p}{name}_layernorm.weight"] = (th,)
    return shapes


def build_weights(seed: int = 0, image_size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Deterministic small random float32 weights for every tensor of the real architecture."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    shapes = weight_shapes(num_positions=image_tokens(image_size))
    for name, shape in sorted(shapes.items()):  # sorted: same draws for the same seed
        w = rng.standard_normal(shape, dtype=np.float32)
        if name.startswith("vision_tower") and "norm" in name:
            # SigLIP LayerNorm multiplies by w (ones-ish); a small bias still tests its mapping.
            w = (1.0 + 0.05 * w) if name.endswith("weight") else 0.02 * w
        elif name.startswith("language_model") and "norm" in name:
            w = 0.05 * w  # Gemma RMSNorm multiplies by (1 + w)
        elif name.endswith("bias"):
            w = 0.02 * w
        else:
            w = 0.05 * w
        weights[name] = w.astype(np.float32)
    return weights


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_processor_files(out_dir: Path, image_size: int, tokenizer: Tokenizer) -> None:
    """generation, preprocessor and tokenizer files as the real checkpoints carry them; also
    used by scripts/real_size_model.py."""
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
    )
    _write_json(
        out_dir / "preprocessor_config.json",
        {
            "image_processor_type": "SiglipImageProcessor",
            "processor_class": "PaliGemmaProcessor",
            "image_seq_length": (image_size // PATCH_SIZE) ** 2,
            "size": {"height": image_size, "width": image_size},
            "do_resize": True,
            "resample": 3,  # bicubic
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    )
    tokenizer.save(str(out_dir / "tokenizer.json"))
    names: dict[str, Any] = {f"{t[1:-1]}_token": t for t in SPECIAL[:5]}  # pad_token: "<pad>", ...
    names["additional_special_tokens"] = [IMAGE_TOKEN]
    _write_json(out_dir / "special_tokens_map.json", names)
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            **names,
            "tokenizer_class": "GemmaTokenizer",
            "processor_class": "PaliGemmaProcessor",
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1000000000000000019884624838656,
        },
    )


def build_tiny_model(out_dir: Path, *, seed: int = 0, image_size: int = IMAGE_SIZE) -> Path:
    """Write a tiny random-weight PaliGemma 2 (real architecture) + out_dir/vae-oid.npz.

    Returns out_dir. Same seed and size, same bytes: tests and golden files can rely on it.
    """
    if image_size <= 0 or image_size % PATCH_SIZE:
        raise ValueError(f"--image-size must be a positive multiple of {PATCH_SIZE}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "config.json", build_config(image_size))
    write_processor_files(out_dir, image_size, build_tokenizer())
    weights = build_weights(seed, image_size)
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    write_random_vae(out_dir / "vae-oid.npz", seed=seed)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """CLI: build the tiny model into DIR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for all weights")
    parser.add_argument(
        "--image-size", type=int, default=IMAGE_SIZE, help="input pixels per side (224, 448)"
    )
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, seed=args.seed, image_size=args.image_size))


if __name__ == "__main__":
    main()
