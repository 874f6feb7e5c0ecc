"""Drop small detached blobs from a probability map: the pet is one region (or a few large ones), while the
model's false alarms on furniture, pavement or plants are often small islands of their own.

Applied to the model-size map before it is up-sampled, so it costs a fraction of a millisecond whatever the
photo's size. A region of the thresholded mask (8-connected) is kept when its area is at least ``ratio`` times the
largest region's; the probabilities of the others are set to 0, so the mask, the probability map and the alpha
all agree. ``ratio`` 0 keeps everything.

Measured with the embedded model (mean Dice, border as pet, at each photo's size): ratio 0.1 raised the 30
validation photos from 0.8670 to 0.8724 (15 better, 2 worse) and the 270 training photos from 0.9107 to 0.9148;
filling holes in the mask, tried at the same time, lowered both.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["DEFAULT_MIN_BLOB_RATIO", "drop_small_blobs"]

DEFAULT_MIN_BLOB_RATIO = 0.1


def drop_small_blobs(prob: np.ndarray, threshold: float, ratio: float = DEFAULT_MIN_BLOB_RATIO) -> np.ndarray:
    """``prob`` (HxW float) with the regions of ``prob > threshold`` smaller than ``ratio`` x the largest one set
    to 0. Returns ``prob`` itself when nothing is dropped, else a copy."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"min blob ratio {ratio} must be between 0 and 1")
    if ratio == 0.0:
        return prob
    mask = (prob > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:  # background plus at most one region
        return prob
    areas = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(areas < ratio * areas.max()) + 1
    if small.size == 0:
        return prob
    out = prob.copy()
    out[np.isin(labels, small)] = 0.0
    return out
