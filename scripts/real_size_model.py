"""Build a random-weight PaliGemma 2 3B of the REAL size (bfloat16, ~6 GB) for benchmarks.

Why: timings on the tiny model say nothing about a 3B model on 2 CPU cores, and the real
checkpoint cannot be downloaded here. Same architecture, config keys, weight names, shapes and
token ids as `google/paligemma2-3b-pt-{224,448}`; only the values are random, so outputs mean
nothing but every matmul has its real size. No network, no torch, no ml_dtypes: bfloat16 is
written as the top 16 bits of float32, into safetensors files streamed tensor by tensor in
chunks, so peak memory stays around half a GB while ~6 GB go to disk.

Layout under the work dir (kept between runs; a finished build is never redone):
    weights/                       size-independent shards (everything but position embeddings)
    paligemma2-3b-pt-224-random/   config, tokenizer, its own position-embedding shard, and
                                   hard links to the shared shards (no extra disk)
    paligemma2-3b-pt-448-random/   the same for 448 (1024 image tokens)

    python -m scripts.real_size_model DIR [--size 224] [--size 448]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from app.model import tiny

log = logging.getLogger(__name__)

BUILDER_VERSION = 1  # bump when the files written change: cached builds are then redone
PATCH_SIZE = 14
TEXT = {
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
}
VISION = {  # SigLIP so400m/14
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
}
BASE_VOCAB = 256_000  # <loc0000> is 256000, <seg000> 257024, <image> 257152 as in the real one
VOCAB_SIZE = 257_216  # the real embedding rows: 64 more than <image>'s id (padding ids)
IMAGE_TOKEN_ID = BASE_VOCAB + len(tiny.LOC_TOKENS) + len(tiny.SEG_TOKENS)
POSITION_KEY = "vision_tower.vision_model.embeddings.position_embedding.weight"
POSITION_SHARD = "model-vision-positions.safetensors"  # the only weights that depend on size
SHARD_BYTES = 2 * 1024**3
CHUNK_ELEMENTS = 32 * 1024 * 1024  # 128 MB of float32 scratch per chunk
STD = 0.02  # the real config's initializer_range


@dataclass(frozen=True)
class TensorSpec:
    """One weight: its checkpoint name, PyTorch shape, and the mean/std of its random values."""

    name: str
    shape: tuple[int, ...]
    mean: float = 0.0
    std: float = STD

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 2 * self.numel  # bfloat16


def num_image_tokens(image_size: int) -> int:
    return (image_size // PATCH_SIZE) ** 2


def _spec(name: str, shape: tuple[int, ...]) -> TensorSpec:
    """Values that keep activations sane: norms near their identity, everything else N(0, 0.02)."""
    if name.startswith("vision_tower") and "norm" in name and name.endswith("weight"):
        return TensorSpec(name, shape, mean=1.0)  # LayerNorm multiplies by w
    return TensorSpec(name, shape)  # Gemma's RMSNorm multiplies by (1 + w): mean 0 is identity


@dataclass(frozen=True)
class Depth:
    """How many layers each tower has: the real 3B's, or fewer for a mid-size model whose
    step is still dominated by reading real-size weights (the 257k-row embedding, real-width
    layers) but which builds and loads in seconds."""

    text: int = TEXT["num_hidden_layers"]
    vision: int = VISION["num_hidden_layers"]

    @property
    def real(self) -> bool:
        return self == Depth()

    @property
    def suffix(self) -> str:
        return "" if self.real else f"-L{self.text}v{self.vision}"

    def text_config(self) -> dict[str, int]:
        return {**TEXT, "num_hidden_layers": self.text}

    def vision_config(self) -> dict[str, int]:
        return {**VISION, "num_hidden_layers": self.vision}


def shared_tensors(depth: Depth = Depth()) -> list[TensorSpec]:
    """Every weight but the position embeddings (their size depends on the image size), with
    the tiny builder's names and layouts at the real sizes."""
    shapes = tiny.weight_shapes(
        depth.text_config(),
        depth.vision_config(),
        VOCAB_SIZE,
        num_positions=1,
        patch_size=PATCH_SIZE,
    )
    return [_spec(name, shape) for name, shape in sorted(shapes.items()) if name != POSITION_KEY]


def position_tensor(image_size: int) -> TensorSpec:
    return _spec(POSITION_KEY, (num_image_tokens(image_size), VISION["hidden_size"]))


# -- bfloat16 safetensors, streamed ---------------------------------------------------------
def _bf16_chunks(spec: TensorSpec, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The tensor's values as bfloat16 bit patterns (uint16), at most CHUNK_ELEMENTS at a time.

    Uniform values with the wanted mean and std (4x faster to draw than normal ones, and the
    distribution does not matter for timing); bfloat16 = float32's top half (round to zero).
    """
    half_width = spec.std * math.sqrt(3.0)
    left = spec.numel
    while left:
        n = min(left, CHUNK_ELEMENTS)
        values = rng.random(n, dtype=np.float32)
        values *= np.float32(2 * half_width)
        values += np.float32(spec.mean - half_width)
        yield (values.view(np.uint32) >> 16).astype(np.uint16)
        left -= n


def write_bf16_safetensors(path: Path, specs: Sequence[TensorSpec], seed: int) -> None:
    """One safetensors file, header first, then each tensor generated and written in chunks."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": "BF16",
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for spec in specs:
            # One generator per tensor, keyed by name: values do not depend on shard layout.
            key = hashlib.blake2b(spec.name.encode(), digest_size=8).digest()
            rng = np.random.default_rng([seed, int.from_bytes(key, "little")])
            for chunk in _bf16_chunks(spec, rng):
                chunk.tofile(f)
    if path.stat().st_size != 8 + len(raw) + offset:
        raise OSError(f"{path}: short write")


def plan_shards(specs: Sequence[TensorSpec], limit: int = SHARD_BYTES) -> list[list[TensorSpec]]:
    """Greedy packing in name order into shards of at most `limit` bytes (or one big tensor)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


# -- tokenizer and config -------------------------------------------------------------------
def build_tokenizer() -> Tokenizer:
    """The tiny builder's Gemma-style tokenizer at the real size and the real special ids:
    `<loc0000>` 256000, `<seg000>` 257024, `<image>` 257152, and filler up to the embedding's
    257216 rows, as mlx-vlm's detokenizer needs."""
    tok = tiny.build_tokenizer(BASE_VOCAB, VOCAB_SIZE)
    assert tok.token_to_id(tiny.IMAGE_TOKEN) == IMAGE_TOKEN_ID
    return tok


def build_config(image_size: int, depth: Depth = Depth()) -> dict[str, Any]:
    """The tiny builder's config with google/paligemma2-3b-pt-{size}'s sizes and dtype."""
    tokens = num_image_tokens(image_size)
    config = tiny.build_config()
    layers = depth.text
    config["text_config"] |= {
        **depth.text_config(),
        "vocab_size": VOCAB_SIZE,
        "query_pre_attn_scalar": TEXT["head_dim"],
        "layer_types": ["sliding_attention", "full_attention"] * (layers // 2),
        "num_image_tokens": tokens,
        "torch_dtype": "bfloat16",
    }
    config["vision_config"] |= {
        **depth.vision_config(),
        "image_size": image_size,
        "patch_size": PATCH_SIZE,
        "num_image_tokens": tokens,
        "num_positions": tokens,
        "projection_dim": TEXT["hidden_size"],
        "torch_dtype": "bfloat16",
    }
    config |= {
        "hidden_size": 2048,  # as in the real PaliGemma 2 config (see app/model/tiny.py)
        "image_token_index": IMAGE_TOKEN_ID,
        "projection_dim": TEXT["hidden_size"],
        "vocab_size": VOCAB_SIZE,
        "num_hidden_layers": layers,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
        "random_weights": True,
    }
    return config


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# -- build with caching ---------------------------------------------------------------------
def _stamp(seed: int, **extra: Any) -> dict[str, Any]:
    return {"builder_version": BUILDER_VERSION, "seed": seed, **extra}


def _is_built(directory: Path, stamp: dict[str, Any]) -> bool:
    marker = directory / "BUILD_COMPLETE.json"
    return marker.exists() and json.loads(marker.read_text()) == stamp


def _fresh_partial(final: Path) -> Path:
    """An empty `<final>.partial` (our own leftover from an interrupted build is removed)."""
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def check_free_disk(directory: Path, needed: int) -> None:
    """Fail early with a clear message rather than half-way through writing 6 GB."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(
            f"{directory}: {free / 1e9:.1f} GB free, the random 3B checkpoint needs "
            f"{needed / 1e9:.1f} GB; free some space or pass another work dir"
        )


def ensure_shared_weights(workdir: Path, seed: int = 0, depth: Depth = Depth()) -> Path:
    """workdir/weights: the size-independent bfloat16 shards, built once (~6 GB, a few min)."""
    final = workdir / f"weights{depth.suffix}"
    specs = shared_tensors(depth)
    shards = plan_shards(specs)
    stamp = _stamp(seed, shards=len(shards), bytes=sum(s.nbytes for s in specs))
    if _is_built(final, stamp):
        return final
    if final.exists():
        raise FileExistsError(f"{final} exists but is not a finished build of this version")
    check_free_disk(workdir, stamp["bytes"] + 2**30)  # 1 GiB of room to spare
    partial = _fresh_partial(final)
    started = time.perf_counter()
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        log.info("writing %s (%.2f GB)", name, sum(s.nbytes for s in shard) / 1e9)
        write_bf16_safetensors(partial / name, shard, seed)
    _write_json(partial / "BUILD_COMPLETE.json", stamp)
    partial.rename(final)
    log.info("shared weights built in %.0f s", time.perf_counter() - started)
    return final


def ensure_checkpoint(
    workdir: Path, image_size: int = 224, seed: int = 0, depth: Depth = Depth()
) -> Path:
    """A loadable random PaliGemma 2 3B directory for this image size (fewer layers with a
    `depth` other than the real one), built if not cached."""
    if image_size % PATCH_SIZE:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size 14")
    workdir = Path(workdir)
    final = workdir / f"paligemma2-3b-pt-{image_size}-random{depth.suffix}"
    stamp = _stamp(
        seed, image_size=image_size, **({} if depth.real else {"depth": [depth.text, depth.vision]})
    )
    if _is_built(final, stamp):
        return final
    if final.exists():
        raise FileExistsError(f"{final} exists but is not a finished build of this version")
    weights = ensure_shared_weights(workdir, seed, depth)
    partial = _fresh_partial(final)
    _write_json(partial / "config.json", build_config(image_size, depth))
    tiny.write_processor_files(partial, image_size, build_tokenizer())
    position = position_tensor(image_size)
    write_bf16_safetensors(partial / POSITION_SHARD, [position], seed)
    weight_map = {position.name: POSITION_SHARD}
    shards = plan_shards(shared_tensors(depth))
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        try:
            os.link(weights / name, partial / name)  # same bytes, no extra disk
        except OSError:
            (partial / name).symlink_to((weights / name).resolve())
        weight_map |= {spec.name: name for spec in shard}
    total = position.nbytes + sum(s.nbytes for s in shared_tensors(depth))
    _write_json(
        partial / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )
    _write_json(partial / "BUILD_COMPLETE.json", stamp)
    partial.rename(final)
    return final


def main(argv: list[str] | None = None) -> None:
    """CLI: build (or find cached) checkpoints and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--size", type=int, action="append", help="224 (default) and/or 448")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-layers", type=int, default=TEXT["num_hidden_layers"])
    parser.add_argument("--vision-layers", type=int, default=VISION["num_hidden_layers"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    depth = Depth(args.text_layers, args.vision_layers)
    for size in args.size or [224]:
        print(ensure_checkpoint(args.workdir, size, args.seed, depth))


if __name__ == "__main__":
    main()
