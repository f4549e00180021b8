"""PaliGemma through mlx-vlm: load once; prepare a request's inputs exactly as the checkpoint's
processor would; prefill one prompt; decode a batch one token further.

Decoding itself (many sequences at once, with their grammars and budgets) is
app/model/generation.py. Everything here touches MLX: the service's MLX thread only.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from PIL import Image

from app.model.dtype_policy import DtypePolicy, apply_dtype_policy
from app.model.feature_cache import FeatureCache
from app.model.vocab import TokenLayout, Vocabulary
from app.steps.tokens import Piece

log = logging.getLogger(__name__)

PROMPT_CACHE_ENTRIES = 256  # tokenized prompts kept (a few KB each)


class PaliGemma:
    """One resident PaliGemma checkpoint and its processor."""

    def __init__(
        self,
        module: Any,
        processor: Any,
        layout: TokenLayout,
        feature_cache: FeatureCache[mx.array] | None = None,
        weights_dtype: str = "checkpoint",
    ) -> None:
        self.module = module  # mlx-vlm's PaliGemma nn.Module
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.layout = layout
        self.vocabulary = Vocabulary.from_tokenizer(self.tokenizer, layout)
        self.feature_cache = (
            feature_cache if feature_cache is not None else FeatureCache(max_entries=0, max_bytes=0)
        )
        size = processor.image_processor.size
        self.input_size = (int(size["width"]), int(size["height"]))
        self.weights_dtype = weights_dtype  # what the dtype policy ran: reported by benchmarks
        self._prompt_cache: dict[str, tuple[mx.array, mx.array]] = {}

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        dtype: DtypePolicy = "checkpoint",
        feature_cache: FeatureCache[mx.array] | None = None,
    ) -> PaliGemma:
        """Load with mlx-vlm from a local directory and make it behave like the reference."""
        from mlx_vlm.utils import load

        module, processor = load(str(path))
        match_reference_image_scaling(module)
        weights_dtype = apply_dtype_policy(module, dtype, device_name())
        tokenizer = processor.tokenizer
        stop_ids = {tokenizer.eos_token_id}
        for token in ("<end_of_turn>",):  # mix checkpoints may end a turn instead
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                stop_ids.add(token_id)
        layout = TokenLayout.from_tokenizer(tokenizer, sorted(stop_ids))
        return cls(module, processor, layout, feature_cache, weights_dtype)

    def prepare(self, image: Image.Image, prompt: str) -> dict[str, mx.array]:
        """Token ids, attention mask and pixels exactly as the checkpoint's processor makes them.

        The image is first resized to the model's input size with the processor's own filter
        (bicubic), so the processor never turns a 12-megapixel photo into float arrays.
        """
        if image.size != self.input_size:
            image = image.resize(self.input_size, Image.Resampling.BICUBIC)
        input_ids, mask = self._prompt_tokens(prompt)
        return {"input_ids": input_ids, "mask": mask, "pixel_values": self._pixels(image)}

    def _pixels(self, image: Image.Image) -> mx.array:
        """The image processor's rescale and normalise, in a few NumPy operations instead of
        its generic path (~4 ms); tests check the values equal the processor's."""
        config = self.processor.image_processor
        pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3), 0..255
        if config.do_rescale:  # in float64 then float32, as the processor rounds
            pixels = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
        if config.do_normalize:
            mean = np.asarray(config.image_mean, np.float32)
            std = np.asarray(config.image_std, np.float32)
            pixels = (pixels - mean) / std
        return mx.array(pixels.transpose(2, 0, 1)[None])  # (1, 3, H, W) as the processor gives

    def _prompt_tokens(self, prompt: str) -> tuple[mx.array, mx.array]:
        """The processor's ids and mask for a prompt: they do not depend on the image, so they
        are made once per prompt (the full processor call costs ~10 ms, mostly overhead)."""
        cached = self._prompt_cache.get(prompt)
        if cached is None:
            # An explicit <image> marks where the image tokens go (the processor warns without it).
            blank = Image.new("RGB", self.input_size)
            batch = self.processor(images=[blank], text=[f"<image>{prompt}"], return_tensors="np")
            cached = (
                mx.array(np.asarray(batch["input_ids"])),
                mx.array(np.asarray(batch["attention_mask"])),
            )
            if len(self._prompt_cache) >= PROMPT_CACHE_ENTRIES:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
            self._prompt_cache[prompt] = cached
        return cached

    def image_features(self, pixel_values: mx.array) -> mx.array:
        """Projected image embeddings, cached by pixel content.

        Mirrors the vision half of mlx-vlm's PaliGemma `get_input_embeddings`, which accepts the
        result back as `cached_image_features`; tests check both paths give identical logits.
        """
        pixels = np.asarray(pixel_values)
        key = hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest() + str(pixels.shape)
        cached = self.feature_cache.get(key)
        if cached is not None:
            return cached
        embed_dtype = self.module.language_model.model.embed_tokens.weight.dtype
        if embed_dtype not in (mx.float32, mx.float16, mx.bfloat16):  # quantized embedding
            embed_dtype = self.module.language_model.model.embed_tokens.scales.dtype
        hidden, _, _ = self.module.vision_tower(
            pixel_values.transpose(0, 2, 3, 1).astype(embed_dtype),  # NCHW -> NHWC
            output_hidden_states=True,
        )
        features = self.module.multi_modal_projector(hidden[None, :].astype(pixel_values.dtype))
        mx.eval(features)
        self.feature_cache.put(key, features)
        return features

    def prefill(self, image: Image.Image, prompt: str) -> Prefilled:
        """One prompt's prefix through the language model, alone: the KV cache it leaves and the
        logits of the first new token.

        The same operations as mlx-vlm's `generate_step` (image features merged into the
        embeddings, the prefix in chunks of its prefill step, the last token apart), so a
        sequence decoded from here gives what that reference gives.
        """
        # mlx-vlm's own chunk size, so the numerics are the reference's (imported here: the
        # module makes an MLX stream when imported, which belongs on this thread).
        from mlx_vlm.generate.common import DEFAULT_PREFILL_STEP_SIZE
        from mlx_vlm.models.cache import make_prompt_cache

        started = time.perf_counter()
        inputs = self.prepare(image, prompt)
        prepared = time.perf_counter()
        features = self.image_features(inputs["pixel_values"])
        encoded = time.perf_counter()
        ids = inputs["input_ids"]
        embedded = self.module.get_input_embeddings(
            ids, inputs["pixel_values"], mask=inputs["mask"], cached_image_features=features
        )
        embeds = embedded.inputs_embeds  # (1, L, hidden)
        prompt_tokens = int(ids.shape[1])
        language = self.module.language_model
        cache = make_prompt_cache(language)
        while embeds.shape[1] > 1:
            chunk = min(DEFAULT_PREFILL_STEP_SIZE, embeds.shape[1] - 1)
            language(ids[:, :chunk], inputs_embeds=embeds[:, :chunk], cache=cache)
            mx.eval([c.state for c in cache])
            ids, embeds = ids[:, chunk:], embeds[:, chunk:]
        logits = language(ids, inputs_embeds=embeds, cache=cache).logits[:, -1, :]  # (1, V)
        mx.eval(logits)
        return Prefilled(
            logits=logits,
            cache=cache,
            last_prompt_token=int(np.asarray(ids)[0, -1]),
            prompt_tokens=prompt_tokens,
            timings_ms={
                "preprocess": (prepared - started) * 1000,
                "vision": (encoded - prepared) * 1000,
                "prefill": (time.perf_counter() - encoded) * 1000,
            },
        )

    def decode(self, tokens: mx.array, cache: list[Any]) -> mx.array:
        """Logits (B, V) of the next token of every row, fed its last token (B,) against the
        batch's KV cache (which this extends by one position)."""
        return self.module.language_model(tokens[:, None], cache=cache).logits[:, -1, :]


@dataclass(frozen=True)
class Prefilled:
    logits: mx.array  # (1, V): the first new token's
    cache: list[Any]  # one KV cache per layer, holding the whole prompt
    last_prompt_token: int  # what logits processors see as the context before any new token
    prompt_tokens: int
    timings_ms: dict[str, float]  # preprocess, vision (0 when cached), prefill


class PieceStream:
    """Generated ids -> pieces as soon as each is known: loc/seg ids become their tokens by id
    arithmetic at once; a run of other ids is detokenized whole when it ends."""

    def __init__(self, layout: TokenLayout, tokenizer: Any) -> None:
        self.layout, self.tokenizer = layout, tokenizer
        self.run: list[int] = []

    def feed(self, token_id: int, prob: float) -> list[Piece]:
        special = self.layout.special_piece(token_id)
        if special is None:
            self.run.append(token_id)
            return []
        return [*self.finish(), Piece(special, prob)]

    def finish(self) -> list[Piece]:
        """The pending text run, if any."""
        if not self.run:
            return []
        text = self.tokenizer.decode(self.run, skip_special_tokens=True)
        self.run = []
        return [Piece(text)]


def match_reference_image_scaling(module: Any) -> None:
    """Scale image features by 1/sqrt(text hidden size), as transformers (the reference) does.

    mlx-vlm divides by the top-level `hidden_size`, which PaliGemma 2 configs inherit from
    PaliGemma 1 (2048 where the text tower has 2304): every output would silently drift.
    """
    config = module.config
    text_hidden = config.text_config.hidden_size
    if config.hidden_size != text_hidden:
        log.info(
            "image feature scale: using text hidden size %d instead of config hidden_size %d",
            text_hidden,
            config.hidden_size,
        )
        config.hidden_size = text_hidden


def device_name() -> str:
    """`gpu` (Metal or CUDA) or `cpu`: where MLX runs by default on this thread."""
    return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
