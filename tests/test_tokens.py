"""Parsing PaliGemma output into objects: the happy path and every malformed shape we know of."""

from __future__ import annotations

import pytest

from app.steps.tokens import Piece, box_to_pixels, parse_pieces, parse_text, pieces_from_text


def locs(*values: int) -> str:
    return "".join(f"<loc{v:04d}>" for v in values)


def segs(*codes: int) -> str:
    return "".join(f"<seg{c:03d}>" for c in codes)


CODES = tuple(range(100, 116))
CAT = locs(100, 200, 300, 400) + segs(*CODES) + " cat"
DOG = locs(500, 10, 900, 420) + segs(*range(16)) + " dog"


def test_single_segmentation_object() -> None:
    [obj] = parse_text(CAT)
    assert obj.label == "cat"
    assert obj.loc == (100, 200, 300, 400)
    assert obj.codes == CODES
    assert obj.score is None  # plain text carries no probabilities


def test_several_objects_keep_their_own_boxes_and_codes() -> None:
    objects = parse_text(CAT + " ; " + DOG + " ; " + locs(1, 2, 3, 4) + " left wheel")
    assert [o.label for o in objects] == ["cat", "dog", "left wheel"]
    assert objects[0].codes == CODES and objects[1].codes == tuple(range(16))
    assert objects[2].codes is None and objects[2].loc == (1, 2, 3, 4)


def test_detection_output_has_no_codes() -> None:
    [a, b] = parse_text(locs(10, 20, 30, 40) + " car ; " + locs(50, 60, 70, 80) + " car")
    assert (a.label, a.loc, a.codes) == ("car", (10, 20, 30, 40), None)
    assert b.loc == (50, 60, 70, 80)


def test_stray_text_before_and_between_objects_is_ignored() -> None:
    objects = parse_text("Sure! here: " + CAT + " ; and also " + DOG)
    assert [o.label for o in objects] == ["cat", "dog"]


def test_truncated_box_is_dropped() -> None:
    assert parse_text(CAT + " ; " + locs(1, 2)) == parse_text(CAT)
    assert parse_text(locs(1, 2, 3) + " cat") == []


def test_truncated_codes_give_detection_only_and_keep_the_box() -> None:
    [cat, cut] = parse_text(CAT + " ; " + locs(5, 6, 7, 8) + segs(1, 2, 3))
    assert cat.codes == CODES
    assert (cut.loc, cut.codes, cut.label) == ((5, 6, 7, 8), None, "")


def test_fewer_than_16_codes_then_label_is_detection_only() -> None:
    [obj] = parse_text(locs(1, 2, 3, 4) + segs(*range(10)) + " cat")
    assert obj.codes is None and obj.label == "cat"


def test_more_than_16_codes_is_not_a_mask() -> None:
    [obj] = parse_text(locs(1, 2, 3, 4) + segs(*range(17)) + " cat")
    assert obj.codes is None


def test_codes_without_a_box_are_not_attached_to_anything() -> None:
    objects = parse_text(segs(*range(16)) + " ghost ; " + CAT)
    assert [o.label for o in objects] == ["cat"] and objects[0].codes == CODES


def test_codes_after_a_label_do_not_join_the_previous_object() -> None:
    objects = parse_text(CAT + segs(*range(16)) + " ; " + DOG)
    assert objects[0].codes == CODES
    assert [o.label for o in objects] == ["cat", "dog"]


def test_next_box_without_separator_starts_a_new_object() -> None:
    objects = parse_text(CAT + DOG)
    assert [o.label for o in objects] == ["cat", "dog"]
    assert objects[1].codes == tuple(range(16))


@pytest.mark.parametrize("separator", ["\n", "<eos>", "<end_of_turn>", " ;", ";"])
def test_newline_and_eos_end_an_object(separator: str) -> None:
    objects = parse_text(CAT + separator + "trailing words")
    assert [o.label for o in objects] == ["cat"]


def test_eos_in_the_middle_keeps_later_objects_apart() -> None:
    objects = parse_text(CAT + "<eos>" + DOG)
    assert [o.label for o in objects] == ["cat", "dog"]


def test_whitespace_inside_the_loc_run_is_tolerated() -> None:
    [obj] = parse_text("<loc0001> <loc0002> <loc0003> <loc0004> " + segs(*CODES) + " cat")
    assert obj.loc == (1, 2, 3, 4) and obj.codes == CODES


def test_other_tags_are_removed_from_labels() -> None:
    [obj] = parse_text(CAT + "<pad>  tabby ")
    assert obj.label == "cat tabby"


def test_out_of_range_tokens_are_text() -> None:
    assert parse_text(locs(1, 2, 3) + "<loc1024> cat") == []


def test_empty_and_garbage_text() -> None:
    assert parse_text("") == []
    assert parse_text("a cat sitting on a mat") == []
    assert parse_text("<seg001><loc") == []


def test_score_is_the_mean_probability_of_the_loc_and_seg_tokens() -> None:
    pieces = [Piece(f"<loc000{i}>", 0.5) for i in range(4)]
    pieces += [Piece(f"<seg00{i % 10}>", 1.0) for i in range(16)]
    pieces += [Piece(" cat", None)]
    [obj] = parse_pieces(pieces)
    assert obj.score == pytest.approx((4 * 0.5 + 16 * 1.0) / 20)


def test_detection_score_uses_the_loc_tokens_only() -> None:
    pieces = [
        Piece("<loc0001>", 0.2),
        Piece("<loc0002>", 0.4),
        Piece("<loc0003>", 0.6),
        Piece("<loc0004>", 0.8),
        Piece(" car"),
    ]
    [obj] = parse_pieces(pieces)
    assert obj.score == pytest.approx(0.5)


def test_pieces_from_text_splits_tokens_and_text() -> None:
    assert [p.text for p in pieces_from_text("x<loc0001><seg002> cat<eos>")] == [
        "x",
        "<loc0001>",
        "<seg002>",
        " cat",
        "<eos>",
    ]


def test_box_to_pixels_reorders_scales_and_rounds() -> None:
    # loc order is y_min, x_min, y_max, x_max over 0..1023 -> pixels x_min, y_min, x_max, y_max
    assert box_to_pixels((0, 0, 1023, 1023), 1024, 512) == (0, 0, 1023, 512)  # 511.5 rounds up
    assert box_to_pixels((256, 512, 768, 1024), 640, 480) == (320, 120, 640, 360)
    assert box_to_pixels((1, 1, 3, 3), 1, 1) == (0, 0, 0, 0)
