"""app.compose: colours and margins parsed, subject boxes, cover scaling, and compositing arithmetic."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.compose import (
    Box,
    Length,
    Margin,
    composite,
    cover,
    crop_to_subject,
    parse_colour,
    parse_margin,
    subject_box,
)

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)


def square_alpha(top: int = 10, left: int = 20, size: int = 15, shape: tuple[int, int] = (40, 60)) -> np.ndarray:
    alpha = np.zeros(shape, np.uint8)
    alpha[top:top + size, left:left + size] = 255
    return alpha


# --- parse_colour ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "colour"), [("#ffffff", (255, 255, 255)), ("#00FF7f", (0, 255, 127)),
                                              ("102030", (16, 32, 48)), ("#abc", (170, 187, 204)),
                                              (" #000000 ", (0, 0, 0))])
def test_parse_colour_reads_hex(text: str, colour: tuple[int, int, int]) -> None:
    assert parse_colour(text) == colour


@pytest.mark.parametrize("text", ["transparent", "Transparent", " TRANSPARENT "])
def test_parse_colour_transparent_is_none(text: str) -> None:
    assert parse_colour(text) is None


@pytest.mark.parametrize("text", ["", "white", "#ffff", "#gggggg", "#1234567", "rgb(0,0,0)", "#"])
def test_parse_colour_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="#RRGGBB"):
        parse_colour(text)


# --- parse_margin ---------------------------------------------------------------------------------------------

def test_parse_margin_one_value_for_every_side() -> None:
    assert parse_margin("20") == Margin(*[Length(20)] * 4)
    assert parse_margin("20px") == Margin(*[Length(20)] * 4)
    assert parse_margin("10%") == Margin(*[Length(10, percent=True)] * 4)
    assert parse_margin("2.5%") == Margin(*[Length(2.5, percent=True)] * 4)


def test_parse_margin_two_and_four_values_in_css_order() -> None:
    assert parse_margin("10 5%") == Margin(Length(10), Length(5, True), Length(10), Length(5, True))
    assert parse_margin("1,2,3,4") == Margin(Length(1), Length(2), Length(3), Length(4))


@pytest.mark.parametrize(("text", "message"), [("", "one margin"), ("1 2 3", "one margin"), ("-5", "not a margin"),
                                               ("5em", "not a margin"), ("%", "not a margin"),
                                               ("101%", "over 100%"), ("20000", "over 10000 pixels"),
                                               ("ten", "not a margin")])
def test_parse_margin_refuses_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_margin(text)


# --- subject_box / crop_to_subject ----------------------------------------------------------------------------

def test_subject_box_is_the_tight_bounding_box() -> None:
    assert subject_box(square_alpha()) == Box(20, 10, 15, 15)
    assert subject_box(square_alpha() > 0) == Box(20, 10, 15, 15)  # booleans too


def test_subject_box_margin_in_pixels_and_percent_of_the_subject() -> None:
    alpha = square_alpha(top=10, left=20, size=10)
    assert subject_box(alpha, parse_margin("3")) == Box(17, 7, 16, 16)
    assert subject_box(alpha, parse_margin("50%")) == Box(15, 5, 20, 20)  # 50% of 10 pixels
    assert subject_box(alpha, parse_margin("1 2 3 4")) == Box(16, 9, 16, 14)


def test_subject_box_stays_inside_the_image() -> None:
    alpha = square_alpha(top=0, left=50, size=10)
    assert subject_box(alpha, parse_margin("100")) == Box(0, 0, 60, 40)


def test_subject_box_counts_only_alpha_above_the_level() -> None:
    alpha = square_alpha()
    alpha[0, 0] = 10  # a faint speck far from the subject
    assert subject_box(alpha) == Box(0, 0, 35, 25)
    assert subject_box(alpha, level=10) == Box(20, 10, 15, 15)


def test_empty_alpha_has_no_subject() -> None:
    empty = np.zeros((40, 60), np.uint8)
    assert subject_box(empty) is None
    image, box = crop_to_subject(PHOTO, empty)
    assert box is None and image is PHOTO


def test_crop_to_subject_cuts_the_image() -> None:
    image, box = crop_to_subject(PHOTO, square_alpha(), parse_margin("2"))
    assert box == Box(18, 8, 19, 19)
    np.testing.assert_array_equal(image, PHOTO[8:27, 18:37])
    with pytest.raises(ValueError, match="differ in size"):
        crop_to_subject(PHOTO, np.zeros((5, 5), np.uint8))


# --- cover ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [(100, 10), (10, 100), (30, 20), (600, 400)], ids=["wide", "tall", "small",
                                                                                      "big"])
def test_cover_fills_the_size_exactly(source: tuple[int, int]) -> None:
    image = RNG.integers(0, 256, size=(source[1], source[0], 3), dtype=np.uint8)
    assert cover(image, (60, 40)).shape == (40, 60, 3)


def test_cover_keeps_the_centre_and_the_aspect_ratio() -> None:
    # A 200x40 image of vertical stripes, 20 columns each: covering 60x40 keeps scale 1 and the middle 60 columns.
    image = np.repeat(np.repeat(np.arange(10, dtype=np.uint8)[None, :, None] * 20, 20, axis=1), 40, axis=0)
    image = np.repeat(image, 3, axis=2)
    covered = cover(image, (60, 40))
    np.testing.assert_array_equal(covered, image[:, 70:130])
    # Twice as big a target: scaled 2x to 400x80, then the middle 120 columns.
    scaled = cv2.resize(image, (400, 80), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(cover(image, (120, 80)), scaled[:, 140:260])


# --- composite ------------------------------------------------------------------------------------------------

def test_composite_transparent_is_rgba_with_the_alpha_and_black_where_unseen() -> None:
    alpha = RNG.integers(0, 256, size=(40, 60), dtype=np.uint8)
    alpha[:10] = 0
    out = composite(PHOTO, alpha, None)
    assert out.shape == (40, 60, 4) and out.dtype == np.uint8
    seen = alpha > 0
    np.testing.assert_array_equal(out[..., :3][seen], PHOTO[seen])  # every visible pixel keeps its colour
    assert not out[..., :3][~seen].any()  # a fully transparent one is black
    np.testing.assert_array_equal(out[..., 3], alpha)


def test_composite_transparent_takes_a_boolean_mask() -> None:
    mask = np.zeros((40, 60), bool)
    mask[5:30, 10:50] = True
    out = composite(PHOTO, mask, None)
    np.testing.assert_array_equal(out[..., 3], mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(out[..., :3], np.where(mask[..., None], PHOTO, 0))


def test_composite_over_a_colour_blends_by_alpha() -> None:
    alpha = RNG.integers(0, 256, size=(40, 60), dtype=np.uint8)
    colour = (10, 200, 30)
    out = composite(PHOTO, alpha, colour)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    weight = alpha[..., None] / 255.0
    expected = PHOTO * weight + np.array(colour) * (1 - weight)
    assert np.abs(out - expected).max() <= 0.51
    hard = square_alpha()
    out = composite(PHOTO, hard, colour)
    np.testing.assert_array_equal(out[hard == 255], PHOTO[hard == 255])
    assert (out[hard == 0] == colour).all()


def test_composite_over_an_image_covers_it_first() -> None:
    background = np.zeros((20, 30, 3), np.uint8)
    background[:, :, 2] = 255  # blue, half the photo's size: scaled up 2x
    out = composite(PHOTO, square_alpha(), background)
    assert out.shape == (40, 60, 3)
    assert (out[0, 0] == (0, 0, 255)).all()
    np.testing.assert_array_equal(out[15, 25], PHOTO[15, 25])
    with pytest.raises(ValueError, match="differ in size"):
        composite(PHOTO, np.zeros((4, 4), np.uint8), None)


# --- edges the mutation run found unpinned ----------------------------------------------------------------------

def test_a_subject_one_pixel_high_or_wide_is_still_a_subject() -> None:
    row = np.zeros((40, 60), np.uint8)
    row[7, 10:30] = 255
    assert subject_box(row) == Box(10, 7, 20, 1)
    assert subject_box(row.T.copy()) == Box(7, 10, 1, 20)


def test_crop_to_subject_passes_its_level_on() -> None:
    alpha = np.zeros((40, 60), np.uint8)
    alpha[5:30, 5:50] = 100  # a faint haze
    alpha[10:20, 20:30] = 255  # the subject
    _, box = crop_to_subject(PHOTO, alpha, level=150)
    assert box == Box(20, 10, 10, 10)


def test_cover_crops_the_long_side_around_the_centre_when_the_height_binds() -> None:
    tall = np.repeat(np.arange(40, dtype=np.uint8)[:, None, None], 3, axis=2).repeat(10, axis=1)  # 40x10, rows 0..39
    out = cover(tall, (10, 10))
    assert out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out[:, 0, 0], np.arange(15, 25))  # rows 15..24: the middle


def test_cover_averages_when_it_shrinks() -> None:
    checker = (np.indices((40, 40)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = cover(np.repeat(checker[..., None], 3, axis=2), (20, 20))
    assert np.abs(out.astype(int) - 128).max() <= 1  # area averaging: grey, not a sampled checkerboard


def test_margins_at_the_caps_are_accepted() -> None:
    assert parse_margin("100%").top == Length(100.0, True)
    assert parse_margin("10000px").left == Length(10000.0)
