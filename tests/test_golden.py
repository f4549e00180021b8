"""Golden objects (tests/data/golden_objects.npz, from scripts/make_golden.py): the same boxes
and mask bits through the in-process API and through HTTP, so a swapped, flipped, transposed
or mis-paired mask fails here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from app.api.app import create_app
from app.model.random_vae import write_random_vae
from app.model.vae import MaskDecoder
from app.runtime.pool import create_worker
from app.steps.masks import decode_rle
from app.steps.objects import objects_from_text
from scripts.harness import local_client, tiny_settings, wait_healthy
from scripts.scripted_output import ScriptedOutput
from tests.images import gradient, image_bytes

GOLDEN = Path(__file__).parent / "data" / "golden_objects.npz"
# Masks are thresholded decoder outputs: another backend (Metal) may flip a pixel that sits
# at the threshold, never a whole mask. A swap or flip changes hundreds of pixels.
MAX_DIFFERENT_PIXELS = 6


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    with np.load(GOLDEN) as data:
        width, height = (int(v) for v in data["size"])
        masks = np.unpackbits(data["mask_bits"], axis=-1, count=width).astype(bool)
        return {
            "text": str(data["text"]),
            "size": (width, height),
            "labels": data["labels"].tolist(),
            "boxes": [tuple(int(v) for v in b) for b in data["boxes"]],
            "masks": [m if has else None for m, has in zip(masks, data["has_mask"], strict=True)],
        }


def assert_matches(golden: dict[str, Any], labels: list[str], boxes: list[Any], masks: list[Any]):  # type: ignore[no-untyped-def]
    assert labels == golden["labels"] == ["car", "cat", "dog"]
    assert [tuple(b) for b in boxes] == golden["boxes"]
    for got, want in zip(masks, golden["masks"], strict=True):
        if want is None:
            assert got is None
            continue
        assert got.shape == want.shape and want.sum() > 100
        assert np.count_nonzero(got != want) <= MAX_DIFFERENT_PIXELS


def test_in_process_api_matches_the_golden_file(golden: dict[str, Any], tmp_path: Path) -> None:
    decoder = MaskDecoder.load(write_random_vae(tmp_path / "vae-oid.npz", seed=0))
    objects = objects_from_text(golden["text"], *golden["size"], decoder)
    assert_matches(
        golden, [o.label for o in objects], [o.box for o in objects], [o.mask for o in objects]
    )


@pytest.fixture(scope="module")
def forced_service(tiny_model_dir: Path) -> Iterator[tuple[Any, ScriptedOutput]]:
    """The tiny model made to say the golden text. Unconstrained: a detect-only object inside
    a segment answer is off-grammar, and the grammar would complete it with codes."""
    script = ScriptedOutput(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    settings = tiny_settings(tiny_model_dir, constrained=False)
    worker = create_worker(settings, logits_processors=script.processors)
    with local_client(create_app(settings, worker)) as client:
        wait_healthy(client)
        yield client, script


def test_http_rle_matches_the_golden_file(
    golden: dict[str, Any], forced_service: tuple[Any, ScriptedOutput]
) -> None:
    client, script = forced_service
    script.text = golden["text"]
    response = client.post(
        "/segment",
        data={"prompt": "car ; cat ; dog", "mask_format": "rle"},
        files={"image_file": ("g.png", image_bytes(gradient(*golden["size"])))},
    )
    assert response.status_code == 200, response.text
    objects = response.json()["objects"]
    masks = [None if o["mask"] is None else decode_rle(o["mask"]) for o in objects]
    assert_matches(golden, [o["label"] for o in objects], [o["box"] for o in objects], masks)
    assert [o["area"] for o in objects[1:]] == [int(m.sum()) for m in golden["masks"][1:]]
