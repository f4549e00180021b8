"""The old service's keys (SEGMENT_COMPAT=seed) as pure steps: its box arithmetic, its 64x64
grey mask encoding, and which objects its `masks` list holds."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from app.api.schemas import render
from app.pipeline import SegmentResult
from app.steps.objects import SegmentedObject
from app.steps.seed import image_png, seed_coordinates, seed_mask_pixels, seed_mask_png, seed_object


@pytest.mark.parametrize(
    ("loc", "size", "want"),
    [
        ((0, 0, 1023, 1023), 448, (0, 0, 447, 447)),  # truncated: never the image's own side
        ((100, 200, 600, 700), 448, (87, 43, 306, 262)),  # 200 / 1024 * 448 = 87.5 -> 87
        ((5, 5, 6, 6), 224, (1, 1, 1, 1)),  # 1.09 and 1.31: both 1, as the old service had it
    ],
)
def test_coordinates_are_the_old_services_truncated_input_pixels(
    loc: tuple[int, int, int, int], size: int, want: tuple[int, int, int, int]
) -> None:
    assert seed_coordinates(loc, size) == want


def test_the_mask_is_the_decoder_map_as_8_bit_grey() -> None:
    raw = np.array([[-3.0, -1.0, 0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    assert seed_mask_pixels(raw).tolist() == [[0, 0, 127, 191, 255, 255]]  # x * 0.5 + 0.5


def test_the_mask_png_round_trips_as_a_64x64_grey_image() -> None:
    raw = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    png = Image.open(io.BytesIO(seed_mask_png(raw)))
    assert png.mode == "L" and png.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(png), seed_mask_pixels(raw))


def _result(objects: list[SegmentedObject], model_image_png: bytes | None) -> SegmentResult:
    return SegmentResult(
        model="m",
        prompt="segment cat ; dog",
        width=30,
        height=20,
        text="",
        objects=objects,
        overlay_png=None,
        timings_ms={},
        tokens={},
        model_image_png=model_image_png,
    )


def test_render_lists_segmented_objects_only_and_the_model_image() -> None:
    """The old service listed an object in `masks` only when it had <seg> codes."""
    raw = np.zeros((64, 64), dtype=np.float32)
    seed = seed_object(raw, (0, 0, 512, 512), 224)
    segmented = SegmentedObject("cat", (0, 0, 15, 10), None, 0.9, 150, seed=seed)
    detected = SegmentedObject("dog", (5, 5, 30, 20), None, 0.8, 375)
    square = image_png(Image.new("RGB", (224, 224)))
    body = render(_result([segmented, detected], square)).model_dump(mode="json")
    assert base64.b64decode(body["image"]) == square
    assert body["masks"] == [
        {"mask": base64.b64encode(seed.mask_png).decode(), "coordinates": [0, 0, 112, 112]}
    ]
    assert [o["label"] for o in body["objects"]] == ["cat", "dog"]


def test_without_the_model_image_there_are_no_old_keys() -> None:
    body = render(_result([], None)).model_dump(mode="json")
    assert "image" not in body and "masks" not in body
