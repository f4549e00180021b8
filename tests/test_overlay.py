"""The overlay picture: masks tinted in their own colours, boxes and tags drawn, nothing else."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from app.overlay import FILL_OPACITY, colour, draw_overlay, overlay_png


@dataclass(frozen=True)
class Found:
    label: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None
    score: float | None


def grey(width: int = 200, height: int = 150) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 128, 128))


def rect_mask(box: tuple[int, int, int, int], width: int = 200, height: int = 150) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def test_no_objects_leaves_the_image_as_it_is() -> None:
    image = grey()
    assert np.array_equal(draw_overlay(image, []), np.asarray(image))


def test_masks_are_tinted_boxes_outlined_and_the_rest_untouched() -> None:
    first = Found("cat", (20, 40, 100, 120), rect_mask((30, 50, 90, 110)), 0.9)
    second = Found("dog", (120, 60, 190, 140), rect_mask((130, 70, 180, 130)), 0.4)
    out = draw_overlay(grey(), [first, second]).astype(int)
    assert out.shape == (150, 200, 3)
    for obj, index in ((first, 0), (second, 1)):
        expected = np.round(128 * (1 - FILL_OPACITY) + np.asarray(colour(index)) * FILL_OPACITY)
        x0, y0, x1, y1 = obj.box
        centre = out[(y0 + y1) // 2 + 10, (x0 + x1) // 2]  # inside the mask, below any tag
        assert np.abs(centre - expected).max() <= 1
        assert tuple(out[y1 - 1, (x0 + x1) // 2]) == colour(index)  # the box's bottom edge
    assert colour(0) != colour(1)
    assert (out[5:15, 105:115] == 128).all()  # between the objects, away from every tag
    assert (out[145:, 0:10] == 128).all()


def test_a_detection_without_a_mask_gets_its_box_and_tag() -> None:
    out = draw_overlay(grey(), [Found("car", (10, 30, 60, 90), None, None)]).astype(int)
    assert tuple(out[89, 35]) == colour(0)  # bottom edge of the box
    assert (out[60, 35] == 128).all()  # no fill without a mask
    tag = out[30:45, 10:60]  # the tag sits just above or inside the top-left corner
    assert (tag == colour(0)).all(axis=-1).sum() > 50


@pytest.mark.parametrize(
    "obj",
    [
        Found("edge", (150, 0, 200, 150), rect_mask((150, 0, 200, 150)), 1.0),
        Found("empty box", (50, 50, 50, 80), None, 0.1),
        Found("empty mask", (10, 10, 40, 40), np.zeros((150, 200), bool), 0.2),
        Found("a rather long label that does not fit", (190, 140, 200, 150), None, 0.99),
    ],
)
def test_awkward_objects_do_not_raise(obj: Found) -> None:
    assert draw_overlay(grey(), [obj]).shape == (150, 200, 3)


def test_tiny_and_grey_images() -> None:
    image = Image.new("L", (8, 6), 100)
    out = draw_overlay(image, [Found("x", (0, 0, 8, 6), np.ones((6, 8), bool), 0.5)])
    assert out.shape == (6, 8, 3)


def test_png_holds_the_same_pixels() -> None:
    objects = [Found("cat", (20, 40, 100, 120), rect_mask((30, 50, 90, 110)), 0.9)]
    png = overlay_png(grey(), objects)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), draw_overlay(grey(), objects))
