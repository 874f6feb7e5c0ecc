"""Copy-paste compositing: pets move onto other backgrounds, backgrounds appear without pets, masks follow."""
from __future__ import annotations

import numpy as np
import pytest

from training.copy_paste import CopyPaste, CopyPasteConfig, fill_pet, least_pet_window, paste_pet

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def scene(pet_colour: tuple[int, int, int], background: tuple[int, int, int], box: tuple[int, int, int, int],
          size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A flat-coloured photo with a rectangular 'pet' at box (x0, y0, x1, y1) and its mask."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    mask = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = pet_colour
    mask[y0:y1, x0:x1] = 1
    return image, mask


def test_fill_pet_removes_the_pet_and_keeps_the_rest() -> None:
    image, mask = scene(RED, BLUE, (20, 20, 44, 44))
    filled = fill_pet(image, mask, grow=3)
    assert filled.shape == image.shape and filled.dtype == np.uint8
    centre = filled[28:36, 28:36].reshape(-1, 3).mean(0)
    assert centre[2] > 150 and centre[0] < 80  # blue background flowed in where the red pet was
    far = np.ones_like(mask, bool)
    far[14:50, 14:50] = False
    assert np.array_equal(filled[far], image[far])  # untouched away from the grown hole


def test_fill_pet_without_a_pet_is_the_photo() -> None:
    image, _ = scene(RED, BLUE, (0, 0, 0, 0))
    assert np.array_equal(fill_pet(image, np.zeros((64, 64), np.uint8)), image)


def test_least_pet_window_avoids_the_pet() -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 1  # the pet fills the left half
    x, y, w, h = least_pet_window(mask, np.random.default_rng(0), tries=16)
    assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 64 and w >= 8 and h >= 8
    assert mask[y:y + h, x:x + w].mean() < 0.25


def test_paste_pet_labels_exactly_the_pasted_pixels() -> None:
    background, background_mask = scene(GREEN, BLUE, (0, 0, 0, 0))
    pet, pet_mask = scene(RED, GREEN, (8, 8, 40, 40))
    config = CopyPasteConfig(scale=(0.5, 0.5), min_visible=1.0)
    image, mask = paste_pet(background, background_mask, pet, pet_mask, np.random.default_rng(3), config)
    assert mask.dtype == background_mask.dtype and mask.shape == background_mask.shape
    assert 0.04 < mask.mean() < 0.1  # a 16x16 pet (scaled from 32x32) on a 64x64 frame: 1/16
    labelled = image[mask > 0].astype(int)
    assert (labelled[:, 0] > labelled[:, 2]).mean() > 0.9  # the labelled pixels are the (jittered) red pet
    unlabelled = image[mask == 0].astype(int)
    assert (unlabelled[:, 2] > unlabelled[:, 0]).mean() > 0.95  # the rest is still the blue background


def test_paste_pet_keeps_the_backgrounds_own_pet_where_visible() -> None:
    background, background_mask = scene(GREEN, BLUE, (0, 0, 64, 10))  # a pet strip along the top
    pet, pet_mask = scene(RED, BLUE, (40, 40, 60, 60))
    config = CopyPasteConfig(scale=(0.5, 0.5), min_visible=1.0)
    _, mask = paste_pet(background, background_mask, pet, pet_mask, np.random.default_rng(1), config)
    assert mask[:10].sum() > 0 and mask.sum() > background_mask.sum()


def test_paste_pet_with_an_empty_donor_changes_nothing() -> None:
    background, background_mask = scene(GREEN, BLUE, (5, 5, 20, 20))
    image, mask = paste_pet(background, background_mask, background, np.zeros_like(background_mask),
                            np.random.default_rng(0))
    assert np.array_equal(image, background) and np.array_equal(mask, background_mask)


def pool(n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    return [scene(RED, BLUE, (10 + i, 12, 40 + i, 50)) for i in range(n)]


def test_background_samples_hold_no_pet() -> None:
    mixer = CopyPaste(pool(), CopyPasteConfig(background_p=1.0, paste_p=0.0))
    image, mask = pool()[0]
    out, out_mask = mixer(0, image, mask, np.random.default_rng(0))
    assert out.shape == image.shape and not out_mask.any()
    assert out[..., 0].mean() < 100  # the red pet was filled in, not cropped into the "background"


def test_pasted_samples_move_a_pet_onto_a_filled_background() -> None:
    mixer = CopyPaste(pool(), CopyPasteConfig(background_p=0.0, paste_p=1.0, keep_own_pet_p=0.0,
                                              scale=(0.5, 0.5)))
    image, mask = pool()[0]
    masks = [mixer(0, image, mask, np.random.default_rng(seed))[1] for seed in range(6)]
    assert all(0 < m.mean() < mask.mean() for m in masks)  # one smaller pet, not the original one
    assert len({m.tobytes() for m in masks}) > 1  # placed differently each time


def test_untouched_share_passes_samples_through() -> None:
    mixer = CopyPaste(pool(), CopyPasteConfig(background_p=0.0, paste_p=0.0))
    image, mask = pool()[1]
    out, out_mask = mixer(1, image, mask, np.random.default_rng(0))
    assert out is image and out_mask is mask


def test_copy_paste_needs_two_images() -> None:
    with pytest.raises(ValueError, match="at least two"):
        CopyPaste(pool(1))
