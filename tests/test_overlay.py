"""The overlay picture: masks tinted in their own colours, boxes and tags drawn, nothing else."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from app.steps.masks import LIBPNG_MAX_SIDE
from app.steps.overlay import (
    BAND_PIXELS,
    FILL_OPACITY,
    PALETTE,
    colour,
    draw_overlay,
    overlay_png,
)

GREY = 128


@dataclass(frozen=True)
class Found:
    label: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None
    score: float | None


def grey(width: int = 200, height: int = 150) -> Image.Image:
    return Image.new("RGB", (width, height), (GREY, GREY, GREY))


def rect_mask(box: tuple[int, int, int, int], width: int = 200, height: int = 150) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def is_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """(…) bool: which pixels of a (…, 3) array are exactly `rgb`."""
    return (pixels == np.asarray(rgb)).all(axis=-1)


def inked(pixels: np.ndarray, rgb: tuple[int, int, int]) -> int:
    """How many pixels are near `rgb`: text strokes are 1-2 px and antialiased."""
    return int((np.abs(pixels.astype(int) - np.asarray(rgb)).max(axis=-1) < 60).sum())


def tinted(rgb: tuple[int, int, int], under: int = GREY) -> np.ndarray:
    return np.round(under * (1 - FILL_OPACITY) + np.asarray(rgb) * FILL_OPACITY)


CAT = Found("cat", (20, 40, 100, 120), rect_mask((30, 50, 90, 110)), 0.9)
DOG = Found("dog", (120, 60, 190, 140), rect_mask((130, 70, 180, 130)), 0.4)


def test_no_objects_leaves_the_image_as_it_is() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8))
    out = draw_overlay(image, [])
    assert out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(image))


def test_the_callers_image_is_not_drawn_on() -> None:
    image = grey()
    draw_overlay(image, [CAT, DOG])
    assert (np.asarray(image) == GREY).all()


def test_masks_are_tinted_boxes_outlined_and_the_rest_untouched() -> None:
    out = draw_overlay(grey(), [CAT, DOG]).astype(int)
    assert out.shape == (150, 200, 3)  # height, width: not transposed
    for obj, index in ((CAT, 0), (DOG, 1)):
        x0, y0, x1, y1 = obj.box
        centre = out[(y0 + y1) // 2 + 10, (x0 + x1) // 2]  # inside the mask, below any tag
        assert np.abs(centre - tinted(colour(index))).max() <= 1
        between = out[y0 + 5, (x0 + x1) // 2]  # inside the box, outside the mask: not tinted
        assert (between == GREY).all()
        assert tuple(out[y1 - 1, (x0 + x1) // 2]) == colour(index)  # the box's bottom edge
        assert tuple(out[(y0 + y1) // 2, x0]) == colour(index)  # its left edge
        assert tuple(out[(y0 + y1) // 2, x1 - 1]) == colour(index)  # its right edge
    assert (out[:, 105:115] == GREY).all()  # the column between the objects
    assert (out[122:, :118] == GREY).all()  # below the first box, left of the second


def test_a_round_mask_is_tinted_inside_and_outlined_in_the_full_colour() -> None:
    rows, columns = np.ogrid[:150, :200]
    disk = (columns - 100) ** 2 + (rows - 85) ** 2 <= 40**2  # x 60..140, y 45..125
    out = draw_overlay(grey(), [Found("ball", (0, 0, 200, 150), disk, None)])
    assert tuple(out[85, 60]) == colour(0)  # the mask's left boundary
    assert tuple(out[85, 140]) == colour(0)  # its right boundary
    assert np.abs(out[85, 100].astype(int) - tinted(colour(0))).max() <= 1  # tinted, not painted
    assert (out[50, 65] == GREY).all()  # in the disk's bounding square, outside the disk


def test_objects_get_distinct_colours_that_cycle() -> None:
    assert len(set(PALETTE)) == len(PALETTE) >= 10
    assert colour(0) != colour(1)
    assert colour(len(PALETTE)) == colour(0)
    assert colour(len(PALETTE) + 3) == colour(3)


def test_a_detection_without_a_mask_gets_its_box_and_tag() -> None:
    out = draw_overlay(grey(), [Found("motorcycle", (10, 60, 60, 120), None, None)]).astype(int)
    assert tuple(out[119, 35]) == colour(0)  # bottom edge of the box
    assert (out[90, 35] == GREY).all()  # no fill without a mask
    above = out[30:60, 10:80]  # the tag sits just above the top-left corner
    assert is_colour(above, colour(0)).sum() > 100
    assert inked(above, (255, 255, 255)) > 10  # white text on the dark crimson


def test_an_all_false_mask_draws_what_no_mask_draws() -> None:
    box = (30, 40, 90, 100)
    empty = draw_overlay(grey(), [Found("x", box, np.zeros((150, 200), bool), 0.5)])
    assert np.array_equal(empty, draw_overlay(grey(), [Found("x", box, None, 0.5)]))


def test_tags_are_drawn_over_every_mask() -> None:
    cover = Found("sky", (0, 0, 200, 150), np.ones((150, 200), bool), None)
    out = draw_overlay(grey(), [CAT, cover])
    x0, y0 = CAT.box[:2]
    tag = out[y0 - 25 : y0, x0 : x0 + 60]  # the first object's tag, above its box
    assert is_colour(tag, colour(0)).sum() > 200  # untinted by the later, all-covering mask


def test_a_tag_at_the_top_edge_moves_inside_the_box_and_stays_on_the_image() -> None:
    out = draw_overlay(grey(), [Found("person", (150, 0, 200, 80), None, 0.75)])
    inside = out[0:25, 150:200]
    assert is_colour(inside, colour(0)).sum() > 400  # the tag, filled, inside the box's top
    assert inked(inside, (255, 255, 255)) > 10  # and its text


def test_tags_of_objects_sharing_a_corner_do_not_cover_each_other() -> None:
    first = Found("cup", (40, 60, 160, 140), None, 0.9)
    second = Found("mug", (40, 60, 150, 130), None, 0.8)
    out = draw_overlay(grey(), [first, second])
    corner = out[30:100, 40:120]
    assert is_colour(corner, colour(0)).sum() > 200
    assert is_colour(corner, colour(1)).sum() > 200


def test_light_colours_get_dark_text() -> None:
    yellow = PALETTE.index((255, 225, 25))
    objects = [Found(f"o{i}", (0, 0, 1, 1), None, None) for i in range(yellow)]
    objects.append(Found("banana", (40, 60, 160, 140), None, 0.5))
    tag = draw_overlay(grey(), objects)[35:60, 40:120]
    assert is_colour(tag, colour(yellow)).sum() > 100
    assert inked(tag, (0, 0, 0)) > 10
    assert inked(tag, (255, 255, 255)) == 0


def box_line_width(side: int) -> int:
    """Rows of colour at the bottom of a box drawn on a side x side grey image."""
    x = side // 2
    out = draw_overlay(grey(side, side), [Found("b", (0, 0, side, side), None, None)])
    return int(is_colour(out[:, x], colour(0))[side // 2 :].sum())


def tag_height(side: int) -> int:
    out = draw_overlay(grey(side, side), [Found("label", (0, side // 2, side, side), None, 0.5)])
    return int(is_colour(out[: side // 2, 1], colour(0)).sum())  # left of the text


def test_lines_and_text_scale_with_the_image() -> None:
    assert box_line_width(48) >= 1
    assert box_line_width(480) == 2
    assert box_line_width(2400) >= 8
    assert 15 <= tag_height(480) <= 30
    assert 4 * tag_height(480) <= tag_height(2400) <= 6 * tag_height(480)
    assert tag_height(48) >= 8  # never shrinks below legible


def test_boxes_at_the_image_edge_keep_their_whole_outline() -> None:
    out = draw_overlay(grey(2400, 1800), [Found("wall", (1200, 900, 2400, 1800), None, None)])
    width = box_line_width(1800)
    assert is_colour(out[1500, -width:], colour(0)).all()  # right edge, fully on the image
    assert is_colour(out[-width:, 1800], colour(0)).all()  # bottom edge


@pytest.mark.parametrize(
    "obj",
    [
        Found("edge", (150, 0, 200, 150), rect_mask((150, 0, 200, 150)), 1.0),
        Found("empty box", (50, 50, 50, 80), None, 0.1),
        Found("inverted box", (80, 80, 40, 40), None, 0.1),
        Found("off the image", (-40, -30, 260, 190), None, None),
        Found("empty mask", (10, 10, 40, 40), np.zeros((150, 200), bool), 0.2),
        Found("uint8 mask", (10, 10, 40, 40), rect_mask((10, 10, 40, 40)).astype(np.uint8), 0.2),
        Found("a rather long label that does not fit at all", (190, 140, 200, 150), None, 0.99),
        Found("", (10, 10, 40, 40), None, None),
    ],
    ids=lambda obj: obj.label or "no label",
)
def test_awkward_objects_do_not_raise(obj: Found) -> None:
    out = draw_overlay(grey(), [obj])
    assert out.shape == (150, 200, 3)
    assert is_colour(out, colour(0)).any()  # its tag at least


def test_a_uint8_mask_draws_as_its_bool_form() -> None:
    box = (30, 40, 90, 100)
    as_bool = draw_overlay(grey(), [Found("x", box, rect_mask(box), 0.5)])
    as_bytes = draw_overlay(grey(), [Found("x", box, rect_mask(box).astype(np.uint8) * 255, 0.5)])
    assert np.array_equal(as_bool, as_bytes)


def test_a_mask_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match="mask"):
        draw_overlay(grey(), [Found("x", (0, 0, 10, 10), np.ones((200, 150), bool), None)])


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I", "I;16", "F"])
@pytest.mark.parametrize("size", [(1, 1), (8, 6), (64, 48)])
def test_any_mode_and_tiny_images(mode: str, size: tuple[int, int]) -> None:
    width, height = size
    image = Image.new(mode, size)
    obj = Found("x", (0, 0, width, height), np.ones((height, width), bool), 0.5)
    out = draw_overlay(image, [obj, Found("y", (0, 0, width, height), None, None)])
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


def test_png_holds_the_same_pixels() -> None:
    objects = [CAT, DOG, Found("car", (10, 0, 60, 30), None, None)]
    decoded = Image.open(io.BytesIO(overlay_png(grey(), objects, compression=6)))
    assert decoded.mode == "RGB"  # channels in RGB order, not OpenCV's BGR
    assert np.array_equal(np.asarray(decoded), draw_overlay(grey(), objects))


def test_the_playground_draws_with_the_same_colours() -> None:
    from app.api.playground import STATIC
    from app.steps.overlay import PALETTE

    script = (STATIC / "playground.js").read_text()
    listed = script.split("const PALETTE = [", 1)[1].split("];", 1)[0]
    numbers = [
        int(n)
        for n in listed.split("//", 1)[1]
        .split("\n", 1)[1]
        .replace("[", " ")
        .replace("]", " ")
        .replace(",", " ")
        .split()
    ]
    assert [tuple(numbers[i : i + 3]) for i in range(0, len(numbers), 3)] == list(PALETTE)


@pytest.mark.parametrize("size", [(LIBPNG_MAX_SIDE + 1, 2), (2, LIBPNG_MAX_SIDE + 1)])
def test_png_past_libpngs_limit(size: tuple[int, int]) -> None:
    """OpenCV's PNG writer refuses such sides; an in-process caller's image may have them."""
    width, height = size
    obj = Found("x", (0, 0, width, height), np.ones((height, width), bool), 0.5)
    decoded = Image.open(io.BytesIO(overlay_png(grey(width, height), [obj])))
    assert decoded.size == size and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), draw_overlay(grey(width, height), [obj]))


def _random_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(2).integers(0, 256, (height, width, 3), np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "P", "RGBA"])
def test_every_band_of_rows_is_copied(mode: str) -> None:
    width, height = 1000, 3 * BAND_PIXELS // 1000 + 7  # three bands and a bit
    image = _random_image(width, height, mode)
    assert np.array_equal(draw_overlay(image, []), np.asarray(image.convert("RGB")))


def test_every_band_of_rows_is_tinted() -> None:
    width, height = 1000, 3 * BAND_PIXELS // 1000 + 7
    image = _random_image(width, height)
    box = (0, 0, width, height)
    out = draw_overlay(image, [Found("x", box, rect_mask(box, width, height), None)])
    under = np.asarray(image).astype(float)
    expected = np.round(under * (1 - FILL_OPACITY) + np.asarray(colour(0)) * FILL_OPACITY)
    inside = (slice(50, height - 50), slice(50, width - 50))  # clear of outline, frame and tag
    assert np.abs(out[inside] - expected[inside]).max() <= 1


@pytest.mark.parametrize(
    ("score", "text"),
    [
        (0.91, "91%"),
        (0.042, "4.2%"),
        (0.0016, "0.16%"),
        (0.0, "0%"),
        (1e-7, "<0.001%"),
        (0.0996, "10%"),
        (1.0, "100%"),
    ],
)
def test_scores_read_as_the_playground_writes_them(score: float, text: str) -> None:
    from app.steps.scores import score_text

    assert score_text(score) == text
