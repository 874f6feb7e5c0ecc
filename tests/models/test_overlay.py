"""The pet tint of overlays (service, predict, grids): the blend where the mask is set, the photo elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

from models.imaging.overlay import tint

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (37, 29, 3), dtype=np.uint8)
MASK = RNG.random((37, 29)) > 0.4


@pytest.mark.parametrize("mask", [MASK, MASK.astype(np.uint8) * 255, MASK.astype(np.float32)])
def test_tint_blends_the_mask_and_keeps_the_rest(mask: np.ndarray) -> None:
    out = tint(PHOTO, mask, colour=(10, 200, 30), strength=0.3)
    assert out.shape == PHOTO.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~MASK], PHOTO[~MASK])
    expected = np.round(PHOTO[MASK] * 0.7 + np.array([10, 200, 30]) * 0.3)
    assert np.abs(out[MASK].astype(int) - expected).max() <= 1  # float32 rounding at .5


def test_tint_leaves_its_input_alone_and_takes_views() -> None:
    before = PHOTO.copy()
    view = PHOTO[::2, 1:]
    out = tint(view, MASK[::2, 1:])
    np.testing.assert_array_equal(PHOTO, before)
    np.testing.assert_array_equal(out[~MASK[::2, 1:]], view[~MASK[::2, 1:]])


@pytest.mark.parametrize(("photo", "mask", "words"), [
    (PHOTO[..., 0], MASK, "HxWx3 uint8"),
    (PHOTO.astype(np.float32), MASK, "HxWx3 uint8"),
    (PHOTO, MASK[:-1], "differ in size"),
])
def test_tint_refuses_what_does_not_fit(photo: np.ndarray, mask: np.ndarray, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        tint(photo, mask)
