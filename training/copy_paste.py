"""Copy-paste compositing for one-class segmentation (after Ghiasi et al. 2021, "Simple Copy-Paste").

On a few hundred photos a model learns "the salient textured thing in the middle" instead of "the animal": every
photo pairs one pet with one background. Compositing breaks that pairing:

- **paste**: a pet cut out with its mask is scaled, flipped, colour-jittered and pasted onto another photo's
  background (that photo's own pet filled in, or kept, so some composites hold two animals);
- **background**: a crop of a photo taken away from its pet (the pet filled in), labelled all background, so the
  model sees tables, sofas, cars and pavement with no animal and learns to leave them out.

Everything works on the dataset's cache (images already resized to the training size), before the ordinary
augmentation pipeline runs, so flips, crops and colour jitter apply to the composite as a whole.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CopyPaste", "CopyPasteConfig", "fill_pet", "least_pet_window", "paste_pet"]


@dataclass(frozen=True)
class CopyPasteConfig:
    paste_p: float = 0.5          # share of samples that get a pasted pet
    background_p: float = 0.12    # share of samples that are a pet-free background crop
    keep_own_pet_p: float = 0.3   # of the pasted samples: keep the background photo's own pet (two animals)
    scale: tuple[float, float] = (0.4, 1.0)  # pasted pet's size relative to its original size
    min_visible: float = 0.6      # at least this share of the pasted pet's box stays inside the frame


def fill_pet(image: np.ndarray, mask: np.ndarray, grow: int = 5) -> np.ndarray:
    """The photo with its pet (grown by ``grow`` pixels, to swallow the border band) inpainted away."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    hole = cv2.dilate((mask > 0).astype(np.uint8), kernel)
    if not hole.any():
        return image.copy()
    # Inpainting cost grows with the hole; at half size it is a few milliseconds and the fill is smooth anyway.
    h, w = hole.shape
    small = cv2.inpaint(cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
                        cv2.resize(hole, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST), 3, cv2.INPAINT_TELEA)
    filled = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(hole[..., None] > 0, filled, image)


def least_pet_window(mask: np.ndarray, rng: np.random.Generator, tries: int = 8) -> tuple[int, int, int, int]:
    """A random window (x, y, w, h) of 30-60% of the side that overlaps the pet least among ``tries``."""
    h, w = mask.shape
    best: tuple[float, tuple[int, int, int, int]] | None = None
    for _ in range(tries):
        side = rng.uniform(0.3, 0.6)
        ww, wh = max(8, int(w * side * rng.uniform(0.8, 1.25))), max(8, int(h * side))
        ww, wh = min(ww, w), min(wh, h)
        x, y = int(rng.integers(0, w - ww + 1)), int(rng.integers(0, h - wh + 1))
        overlap = float(mask[y:y + wh, x:x + ww].mean())
        if best is None or overlap < best[0]:
            best = (overlap, (x, y, ww, wh))
    assert best is not None
    return best[1]


def _jitter_colour(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and a small per-channel gain, so a pasted pet does not match its new scene's light."""
    out = pixels.astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.75, 1.25) + mean * rng.uniform(0.75, 1.25)
    out *= rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def paste_pet(background: np.ndarray, background_mask: np.ndarray, pet: np.ndarray, pet_mask: np.ndarray,
              rng: np.random.Generator, config: CopyPasteConfig = CopyPasteConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Paste the pet of (``pet``, ``pet_mask``) onto ``background``; the pet occludes what it covers.

    Returns the composite and its mask: the pasted pet's pixels plus the background's own mask where visible.
    """
    ys, xs = np.nonzero(pet_mask)
    if len(ys) == 0:
        return background.copy(), background_mask.copy()
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    cut, cut_mask = pet[y0:y1, x0:x1], pet_mask[y0:y1, x0:x1].astype(np.float32)
    h, w = background_mask.shape
    scale = rng.uniform(*config.scale) * min(1.0, h / cut.shape[0], w / cut.shape[1])
    ph, pw = max(4, int(round(cut.shape[0] * scale))), max(4, int(round(cut.shape[1] * scale)))
    cut = cv2.resize(cut, (pw, ph), interpolation=cv2.INTER_AREA)
    # A slightly soft edge: a hard binary cut-out leaves a staircase the model could learn to look for.
    alpha = cv2.GaussianBlur(cv2.resize(cut_mask, (pw, ph), interpolation=cv2.INTER_LINEAR), (3, 3), 0)
    if rng.random() < 0.5:
        cut, alpha = cut[:, ::-1], alpha[:, ::-1]
    cut = _jitter_colour(cut, rng)
    slack_x, slack_y = int(pw * (1 - config.min_visible)), int(ph * (1 - config.min_visible))
    left = int(rng.integers(-slack_x, max(-slack_x, w - pw + slack_x) + 1))
    top = int(rng.integers(-slack_y, max(-slack_y, h - ph + slack_y) + 1))
    # Intersection of the pasted box with the frame, in frame and in cut coordinates.
    fx0, fy0, fx1, fy1 = max(left, 0), max(top, 0), min(left + pw, w), min(top + ph, h)
    if fx1 <= fx0 or fy1 <= fy0:
        return background.copy(), background_mask.copy()
    cx0, cy0 = fx0 - left, fy0 - top
    a = alpha[cy0:cy0 + fy1 - fy0, cx0:cx0 + fx1 - fx0, None]
    image = background.copy()
    region = image[fy0:fy1, fx0:fx1].astype(np.float32)
    image[fy0:fy1, fx0:fx1] = (a * cut[cy0:cy0 + fy1 - fy0, cx0:cx0 + fx1 - fx0] + (1 - a) * region).astype(np.uint8)
    mask = background_mask.copy()
    pasted = a[..., 0] > 0.5
    mask[fy0:fy1, fx0:fx1][pasted] = 1
    return image, mask


class CopyPaste:
    """Composites drawn from a pool of (image, mask) pairs at the training size; call it per sample.

    ``pool`` is the dataset's decoded cache; the pet-free backgrounds are computed once, here, so the DataLoader's
    worker processes inherit them instead of each filling every photo again.
    """

    def __init__(self, pool: Sequence[tuple[np.ndarray, np.ndarray]],
                 config: CopyPasteConfig = CopyPasteConfig()) -> None:
        if len(pool) < 2:
            raise ValueError("copy-paste needs at least two training images")
        self.pool = pool
        self.config = config
        self.backgrounds = [fill_pet(image, mask) for image, mask in pool]

    def __call__(self, index: int, image: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        draw = rng.random()
        if draw < c.background_p:
            return self.background_crop(index, rng)
        if draw < c.background_p + c.paste_p:
            donor = int(rng.integers(0, len(self.pool) - 1))
            donor += donor >= index  # any photo but this one
            if rng.random() < c.keep_own_pet_p:
                base, base_mask = image, mask
            else:
                base, base_mask = self.backgrounds[index], np.zeros_like(mask)
            pet, pet_mask = self.pool[donor]
            return paste_pet(base, base_mask, pet, pet_mask, rng, c)
        return image, mask

    def background_crop(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A window of photo ``index`` away from its pet (the pet filled in), scaled to full size: all background."""
        original_mask = self.pool[index][1]
        x, y, w, h = least_pet_window(original_mask, rng)
        size = original_mask.shape[1], original_mask.shape[0]
        crop = cv2.resize(self.backgrounds[index][y:y + h, x:x + w], size, interpolation=cv2.INTER_LINEAR)
        return crop, np.zeros_like(original_mask)
