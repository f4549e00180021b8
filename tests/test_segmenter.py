"""The documented Python API: `Segmenter.load(settings).segment(image, prompt)`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import NotAnImage, NotReady
from app.segmenter import Segmenter
from app.steps.masks import decode_png
from scripts.harness import tiny_settings
from tests.images import gradient, image_bytes


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir: Path) -> Iterator[Segmenter]:
    with Segmenter.load(tiny_settings(tiny_model_dir)) as loaded:
        yield loaded


def test_objects_carry_numpy_masks(segmenter: Segmenter) -> None:
    result = segmenter.segment(gradient(160, 120), "cat ; dog")
    assert result.prompt == "segment cat ; dog" and (result.width, result.height) == (160, 120)
    assert len(result.objects) == 2 and {o.label for o in result.objects} <= {"cat", "dog"}
    for obj in result.objects:
        assert obj.mask is not None and obj.mask.dtype == np.bool_ and obj.mask.shape == (120, 160)
        x0, y0, x1, y1 = obj.box
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
        assert obj.area == int(obj.mask.sum()) and obj.encoded_mask is None


def test_paths_bytes_and_images_give_the_same_answer(segmenter: Segmenter, tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    path.write_bytes(image_bytes(gradient(100, 80)))
    answers = [
        segmenter.segment(source, "dog", mask_format="png")
        for source in (path, str(path), path.read_bytes(), Image.open(path))
    ]
    first = answers[0]
    for other in answers[1:]:
        assert [(o.label, o.box, o.encoded_mask) for o in other.objects] == [
            (o.label, o.box, o.encoded_mask) for o in first.objects
        ]
    assert np.array_equal(decode_png(first.objects[0].encoded_mask), first.objects[0].mask)


def test_overlay_and_errors(segmenter: Segmenter) -> None:
    result = segmenter.segment(gradient(64, 48), "cat", overlay=True)
    assert result.overlay_png is not None and result.overlay_png.startswith(b"\x89PNG")
    with pytest.raises(NotAnImage):
        segmenter.segment(b"not an image", "cat")


def test_works_inside_a_running_event_loop(segmenter: Segmenter) -> None:
    """A notebook's loop is already running; the segmenter has its own."""

    async def inside() -> int:
        return len(segmenter.segment(gradient(64, 48), "cat").objects)

    assert asyncio.run(inside()) >= 1


def test_a_missing_model_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(NotReady, match="make models"):
        Segmenter.load(tiny_settings(tmp_path / "absent"))
