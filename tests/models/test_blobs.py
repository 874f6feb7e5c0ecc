"""Small detached blobs are dropped from the probability map; the pet (and a second pet of similar size) stays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.engine.segmenter import SegmenterBase
from models.imaging.blobs import drop_small_blobs


def two_blobs(small_side: int = 4) -> np.ndarray:
    """A 40x40 map: a 16x16 region of 0.9 and, apart from it, a ``small_side`` square of 0.8."""
    prob = np.full((40, 40), 0.1, dtype=np.float32)
    prob[4:20, 4:20] = 0.9
    prob[30:30 + small_side, 30:30 + small_side] = 0.8
    return prob


def test_a_blob_under_the_ratio_of_the_largest_is_set_to_zero() -> None:
    prob = two_blobs(small_side=4)  # 16 px against 256 px: 6%
    out = drop_small_blobs(prob, 0.5, 0.1)
    assert (out[30:34, 30:34] == 0).all()
    np.testing.assert_array_equal(out[4:20, 4:20], prob[4:20, 4:20])
    assert out[0, 0] == pytest.approx(0.1)  # the background below the threshold is left as it was
    assert prob[30, 30] == pytest.approx(0.8)  # the input is not modified


def test_blobs_over_the_ratio_stay_and_ratio_zero_keeps_everything() -> None:
    prob = two_blobs(small_side=8)  # 64 px against 256: 25%
    np.testing.assert_array_equal(drop_small_blobs(prob, 0.5, 0.1), prob)
    np.testing.assert_array_equal(drop_small_blobs(two_blobs(4), 0.5, 0.0), two_blobs(4))


def test_the_threshold_decides_what_a_region_is() -> None:
    prob = two_blobs(small_side=4)
    # At 0.85 only the 0.9 region is foreground: nothing detached to drop, the 0.8 square is untouched.
    np.testing.assert_array_equal(drop_small_blobs(prob, 0.85, 0.1), prob)


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_a_ratio_outside_0_1_is_an_error(ratio: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        drop_small_blobs(two_blobs(), 0.5, ratio)


class _MapSegmenter(SegmenterBase):
    """An engine whose model always answers with :func:`two_blobs`."""

    image_size = 40

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([two_blobs(4)] * batch.shape[0]))


def test_predict_drops_blobs_only_when_the_engine_is_told_to() -> None:
    engine = _MapSegmenter()
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    assert (engine.predict(image)[30:34, 30:34] > 0.5).all()  # the engine alone leaves the model's map as it is
    engine.min_blob_ratio = 0.1
    assert (engine.predict(image)[30:34, 30:34] == 0).all()
