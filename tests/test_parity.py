"""Parity with the reference: our mlx-vlm wrapper against transformers on the tiny PaliGemma 2.

Both sides get the very same prompt ids and pixels (made once by `PaliGemma.prepare`), run in
float32, and must agree on the first-step logits, on every greedy step's log-probabilities, and
on the greedy ids. The last test shows the config trap (top-level `hidden_size` 2048 != text
`hidden_size` 64, as 2048 != 2304 in real PaliGemma 2) is real: plain mlx-vlm drifts from the
reference until `match_reference_image_scaling` fixes it.

transformers runs PaliGemma as a prefix LM only when it is given `token_type_ids` (0 for the
prompt); without them it attends causally inside the prompt and its last-position logits move by
~0.45 here. mlx-vlm always attends bidirectionally across the whole prompt, so we pass zeros
for the prompt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mlx.core as mx  # noqa: E402
from PIL import Image  # noqa: E402

from app.model.generation import generate  # noqa: E402
from app.model.paligemma import PaliGemma, match_reference_image_scaling  # noqa: E402
from tests.images import gradient  # noqa: E402

PROMPT = "segment cat ; dog"
NEW_TOKENS = 12
LOGIT_TOLERANCE = 1e-4  # float32 on both sides; measured 0.8e-5 to 2e-5
UNFIXED_MIN_DIFF = 1e-3  # without the fix: 0.16 on the gradient, 0.05 on the noise image


@pytest.fixture(scope="module", autouse=True)
def _module_hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The conftest's temp hub cache, also around the module-scoped model loads below."""
    cache = tmp_path_factory.getbasetemp() / "hf-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(cache))
        mp.setenv("HF_HUB_CACHE", str(cache / "hub"))
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        yield


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return gradient(96, 64)


@pytest.fixture(scope="module")
def ours(tiny_model_dir: Path) -> PaliGemma:
    """Our wrapper, loaded as the service loads it (fix applied)."""
    return PaliGemma.load(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Any:
    """transformers' PaliGemma in float32, eval mode."""
    from transformers import PaliGemmaForConditionalGeneration

    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def inputs(ours: PaliGemma, image: Image.Image) -> dict[str, mx.array]:
    """Prompt ids, mask and pixels, made once, fed to both sides."""
    return ours.prepare(image, PROMPT)


def _torch_inputs(inputs: dict[str, mx.array]) -> dict[str, Any]:
    """Our prepared inputs as transformers wants them, with the prefix-LM `token_type_ids`."""
    input_ids = torch.from_numpy(np.asarray(inputs["input_ids"]).astype(np.int64))
    return {
        "input_ids": input_ids,
        "attention_mask": torch.from_numpy(np.asarray(inputs["mask"]).astype(np.int64)),
        "pixel_values": torch.from_numpy(np.asarray(inputs["pixel_values"], dtype=np.float32)),
        "token_type_ids": torch.zeros_like(input_ids),  # the whole prompt is the prefix
    }


def _mlx_last_logits(model: Any, inputs: dict[str, mx.array]) -> np.ndarray:
    """mlx-vlm logits at the last prompt position (what the first new token is drawn from)."""
    out = model(inputs["input_ids"], inputs["pixel_values"], mask=inputs["mask"])
    return np.asarray(out.logits[0, -1].astype(mx.float32))


@pytest.fixture(scope="module")
def reference_last_logits(reference: Any, inputs: dict[str, mx.array]) -> np.ndarray:
    with torch.no_grad():
        return reference(**_torch_inputs(inputs)).logits[0, -1].numpy()


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def _until_stop(ids: Sequence[int], stop_ids: frozenset[int]) -> list[int]:
    """`ids` up to and including the first stop token (greedy runs may stop at different spots)."""
    out: list[int] = []
    for token in ids:
        out.append(int(token))
        if token in stop_ids:
            break
    return out


def test_prepared_inputs_match_the_reference_processor(
    tiny_model_dir: Path, image: Image.Image, inputs: dict[str, mx.array]
) -> None:
    """Our prompt ids, mask and pixels are exactly what transformers' processor makes."""
    # Explicit class, not AutoProcessor: importing mlx_vlm.models.paligemma patches
    # AutoProcessor.from_pretrained to hand back mlx-vlm's own PaliGemmaProcessor, which would
    # compare mlx-vlm with itself.
    from transformers import PaliGemmaProcessor

    processor = PaliGemmaProcessor.from_pretrained(tiny_model_dir)
    assert type(processor).__module__.startswith("transformers.")
    batch = processor(images=[image], text=[f"<image>{PROMPT}"], return_tensors="np")
    ids = np.asarray(inputs["input_ids"])
    assert ids.shape == (1, 256 + 7)  # 256 image tokens, <bos>, 5 prompt tokens, "\n"
    np.testing.assert_array_equal(batch["input_ids"], ids)
    np.testing.assert_array_equal(batch["attention_mask"], np.asarray(inputs["mask"]))
    np.testing.assert_array_equal(batch["token_type_ids"], np.zeros_like(ids))  # all prefix
    np.testing.assert_allclose(
        batch["pixel_values"], np.asarray(inputs["pixel_values"]), rtol=0, atol=1e-6
    )


def test_first_step_logits_match(
    ours: PaliGemma, inputs: dict[str, mx.array], reference_last_logits: np.ndarray
) -> None:
    """Same inputs, float32: last-position logits agree with transformers within 1e-4."""
    logits = _mlx_last_logits(ours.module, inputs)
    assert np.abs(reference_last_logits).max() > 0.1  # not a degenerate all-zero comparison
    assert _max_abs(logits, reference_last_logits) < LOGIT_TOLERANCE


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(
    ("picture", "prompt"),
    [
        (gradient(96, 64), PROMPT),
        # The random model mostly repeats one token; this case switches token after the first.
        (_noise(96, 64, seed=0), "detect car"),
    ],
    ids=["gradient-segment", "noise-detect"],
)
def test_greedy_generation_matches(
    ours: PaliGemma, reference: Any, picture: Image.Image, prompt: str
) -> None:
    """Same greedy ids, and every step's log-probabilities agree within 1e-4."""
    from mlx_vlm.generate.ar import generate_step

    inputs = ours.prepare(picture, prompt)
    with torch.no_grad():
        result = reference.generate(
            **_torch_inputs(inputs),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prompt_len = inputs["input_ids"].shape[1]
    ref_ids = result.sequences[0, prompt_len:].tolist()
    ref_logprobs = torch.stack(result.logits)[:, 0].log_softmax(-1).numpy()

    # Exactly what PaliGemma.generate runs, but keeping the stop token and the log-probs.
    steps = list(
        generate_step(
            inputs["input_ids"],
            ours.module,
            inputs["pixel_values"],
            inputs["mask"],
            max_tokens=NEW_TOKENS,
            temperature=0.0,
        )
    )
    our_ids = [int(token) for token, _ in steps]
    our_logprobs = np.stack([np.asarray(lp.astype(mx.float32)) for _, lp in steps])

    eos = reference.generation_config.eos_token_id
    stop_ids = ours.layout.stop_ids | set(eos if isinstance(eos, list) else [eos])
    expected = _until_stop(ref_ids, stop_ids)
    assert _until_stop(our_ids, stop_ids) == expected
    compared = len(expected)
    assert _max_abs(our_logprobs[:compared], ref_logprobs[:compared]) < LOGIT_TOLERANCE

    # And the wrapper's own generate() says the same thing.
    text_ids = [t for t in expected if t not in stop_ids]
    generation = generate(ours, picture, prompt, max_new_tokens=NEW_TOKENS)
    assert generation.text == ours.tokenizer.decode(text_ids, skip_special_tokens=True)
    assert generation.record.prompt_tokens == prompt_len


def test_image_scaling_trap_is_real_and_the_fix_closes_it(
    tiny_model_dir: Path, inputs: dict[str, mx.array], reference_last_logits: np.ndarray
) -> None:
    """Plain mlx-vlm (no fix) drifts from transformers; `match_reference_image_scaling` fixes it."""
    from mlx_vlm.utils import load

    model, _ = load(str(tiny_model_dir))
    config = model.config
    assert config.hidden_size != config.text_config.hidden_size  # the trap is in the config

    unfixed = _max_abs(_mlx_last_logits(model, inputs), reference_last_logits)
    assert unfixed > UNFIXED_MIN_DIFF

    match_reference_image_scaling(model)
    assert config.hidden_size == config.text_config.hidden_size
    fixed = _max_abs(_mlx_last_logits(model, inputs), reference_last_logits)
    assert fixed < LOGIT_TOLERANCE
