"""app.placement: the region of interest (parsed, resolved, applied) and the subject scaled and moved on its
canvas; and compose's see-through background colour."""
from __future__ import annotations

import numpy as np
import pytest

from app.compose import Box, composite
from app.placement import Placement, RegionError, keep_inside, parse_placement, parse_roi, place_subject

RNG = np.random.default_rng(1)
PHOTO = RNG.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)


def square(top: int = 10, left: int = 20, height: int = 10, width: int = 20) -> np.ndarray:
    alpha = np.zeros((40, 60), np.uint8)
    alpha[top:top + height, left:left + width] = 255
    return alpha


# --- roi --------------------------------------------------------------------------------------------------------

def test_a_roi_in_percent_or_pixels_resolves_to_the_same_box() -> None:
    assert parse_roi("10% 25% 50% 100%").box(60, 40) == Box(6, 10, 24, 30)
    assert parse_roi("6px 10px 30px 40px").box(60, 40) == Box(6, 10, 24, 30)
    assert parse_roi("0% 0% 100% 100%").is_whole_image and not parse_roi("0px 0px 60px 40px").is_whole_image


@pytest.mark.parametrize(("text", "code"), [("0% 0% 101% 100%", "roi_exceeds_bounds"),
                                            ("0px 0px 60px 41px", "roi_exceeds_bounds"),
                                            ("30px 0px 30px 40px", "roi_region_empty"),
                                            ("0px 20px 60px 20px", "roi_region_empty"),
                                            ("50% 0% 10% 100%", "roi_region_empty")])
def test_a_roi_that_does_not_fit_says_why_in_remove_bgs_words(text: str, code: str) -> None:
    with pytest.raises(RegionError) as error:
        parse_roi(text).box(60, 40)
    assert error.value.code == code
    assert str(error.value).startswith("the region ") and ("60x40 photo" in str(error.value) or "no pixel" in
                                                            str(error.value))


@pytest.mark.parametrize("text", ["0% 0% 100%", "0 0 10 10", "a% 0% 10% 10%", "-1px 0px 5px 5px", ""])
def test_a_roi_that_does_not_parse_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="coordinate|four"):
        parse_roi(text)


def test_keep_inside_clears_everything_outside_the_box_and_copies() -> None:
    alpha = np.full((40, 60), 200, np.uint8)
    kept = keep_inside(alpha, Box(5, 6, 10, 4))
    assert kept.sum() == 200 * 40 and (kept[6:10, 5:15] == 200).all() and alpha.min() == 200


# --- scale and position -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("scale", "position", "expected"), [
    ("original", "original", None),
    ("50%", "original", Placement(0.5, (0.5, 0.5))),  # a scale alone centres the subject
    ("original", "center", Placement(None, (0.5, 0.5))),
    ("100%", "0%", Placement(1.0, (0.0, 0.0))),
    ("10%", "25% 75%", Placement(0.1, (0.25, 0.75))),
    ("original", "100% 100%", Placement(None, (1.0, 1.0))),
])
def test_scale_and_position_parse_as_remove_bg_describes_them(scale: str, position: str,
                                                              expected: Placement | None) -> None:
    assert parse_placement(scale, position) == expected


@pytest.mark.parametrize(("scale", "position"), [("9%", "original"), ("101%", "original"), ("half", "center"),
                                                 ("original", "left"), ("original", "10% 20% 30%"),
                                                 ("original", "120%")])
def test_bad_scales_and_positions_are_value_errors(scale: str, position: str) -> None:
    with pytest.raises(ValueError, match="percentage"):
        parse_placement(scale, position)


def test_position_moves_the_subject_without_resizing_it() -> None:
    alpha = square()
    rgb, moved = place_subject(PHOTO, alpha, Placement(None, (1.0, 1.0)))
    assert (moved[30:40, 40:60] == 255).all() and moved.sum() == alpha.sum()
    np.testing.assert_array_equal(rgb[30:40, 40:60], PHOTO[10:20, 20:40])  # the subject's own pixels
    assert not rgb[:30].any()  # the rest of the canvas is black (and clear)
    _, top_left = place_subject(PHOTO, alpha, Placement(None, (0.0, 0.0)))
    assert (top_left[:10, :20] == 255).all() and top_left.sum() == alpha.sum()
    _, bottom_left = place_subject(PHOTO, alpha, Placement(None, (0.0, 1.0)))  # horizontal first, then vertical
    assert (bottom_left[30:, :20] == 255).all() and bottom_left.sum() == alpha.sum()
    _, middle = place_subject(PHOTO, alpha, Placement(None, (0.5, 0.5)))
    assert (middle[15:25, 20:40] == 255).all() and middle.sum() == alpha.sum()


def test_scale_fits_the_subject_inside_its_share_of_the_canvas_keeping_its_aspect() -> None:
    _, full = place_subject(PHOTO, square(), Placement(1.0, (0.5, 0.5)))
    rows, cols = np.nonzero(full)
    assert (cols.min(), cols.max()) == (0, 59)  # 20x10 -> 60x30: the width binds
    assert rows.max() - rows.min() + 1 == 30 and (rows.min(), rows.max()) == (5, 34)  # centred
    _, half = place_subject(PHOTO, square(), Placement(0.5, (0.0, 0.0)))
    rows, cols = np.nonzero(half)
    assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (0, 0, 15, 30)


def test_scale_without_a_position_keeps_the_subjects_centre() -> None:
    _, grown = place_subject(PHOTO, square(top=10, left=20, height=10, width=20), Placement(0.5, None))
    rows, cols = np.nonzero(grown)
    assert (rows.min() + rows.max()) / 2 == pytest.approx(14.5, abs=0.5)
    assert (cols.min() + cols.max()) / 2 == pytest.approx(29.5, abs=0.5)


def test_no_subject_leaves_the_canvas_as_it_is() -> None:
    empty = np.zeros((40, 60), np.uint8)
    rgb, alpha = place_subject(PHOTO, empty, Placement(0.5, (0.5, 0.5)))
    assert rgb is PHOTO and alpha is empty


# --- a see-through background colour ----------------------------------------------------------------------------

def test_the_photo_over_a_see_through_colour_is_rgba_by_the_over_operator() -> None:
    alpha = np.zeros((40, 60), np.uint8)
    alpha[:, 30:] = 255
    alpha[:, 29] = 128
    out = composite(PHOTO, alpha, (10, 20, 30, 64))
    assert out.shape == (40, 60, 4)
    assert (out[:, :29, :3] == (10, 20, 30)).all() and (out[:, :29, 3] == 64).all()  # the colour alone
    np.testing.assert_array_equal(out[:, 30:, :3], PHOTO[:, 30:])  # the opaque pet alone
    assert (out[:, 30:, 3] == 255).all()
    edge_alpha = 128 / 255 + 64 / 255 * (1 - 128 / 255)
    assert abs(int(out[0, 29, 3]) - round(edge_alpha * 255)) <= 1
    expected = (PHOTO[0, 29] * (128 / 255) + np.array((10, 20, 30)) * (64 / 255) * (1 - 128 / 255)) / edge_alpha
    assert np.abs(out[0, 29, :3].astype(float) - expected).max() <= 1
    opaque = composite(PHOTO, alpha, (10, 20, 30, 255))  # a fully opaque 8-digit colour: plain RGB
    np.testing.assert_array_equal(opaque, composite(PHOTO, alpha, (10, 20, 30)))


def test_scale_fits_a_tall_subject_by_its_height() -> None:
    tall = np.zeros((40, 60), np.uint8)
    tall[5:25, 10:20] = 255  # 10 wide, 20 high
    _, placed = place_subject(PHOTO, tall, Placement(1.0, (0.5, 0.5)))
    rows, cols = np.nonzero(placed)
    assert (rows.min(), rows.max()) == (0, 39) and cols.max() - cols.min() + 1 == 20  # 10x20 -> 20x40
