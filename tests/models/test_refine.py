"""models.imaging.refine: the guided filter against a direct reference, and guided_upsample's promises (shape, range,
constants, edges that follow the photo better than bilinear up-sampling, the fast path for big photos)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.imaging.refine import default_radius, guided_filter, guided_upsample


def window_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over each (2r+1)^2 window with mirrored borders, by explicit summation (float64)."""
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (x.ndim - 2)
    padded = np.pad(x, pad, mode="symmetric")
    total = np.zeros_like(x)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            total += padded[dy:dy + x.shape[0], dx:dx + x.shape[1]]
    return total / (2 * radius + 1) ** 2


def reference_color_filter(photo: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al. 2010, Algorithm 1 with the colour guide, written out with a per-pixel 3x3 solve."""
    guide = photo.astype(np.float64) / 255
    p = src.astype(np.float64)
    mean_i, mean_p = window_mean(guide, radius), window_mean(p, radius)
    cov_ip = window_mean(guide * p[..., None], radius) - mean_i * mean_p[..., None]
    outer = np.einsum("hwi,hwj->hwij", guide, guide).reshape(*p.shape, 9)
    sigma = window_mean(outer, radius).reshape(*p.shape, 3, 3) - np.einsum("hwi,hwj->hwij", mean_i, mean_i)
    a = np.linalg.solve(sigma + eps * np.eye(3), cov_ip[..., None])[..., 0]
    b = mean_p - (a * mean_i).sum(-1)
    return (window_mean(a, radius) * guide).sum(-1) + window_mean(b, radius)


def edge_photo(width: int = 96, height: int = 64, edge_x: int = 41) -> np.ndarray:
    """Noisy dark left half, noisy bright right half: one vertical edge at ``edge_x``."""
    rng = np.random.default_rng(1)
    photo = rng.integers(20, 50, size=(height, width, 3)).astype(np.uint8)
    photo[:, edge_x:] = rng.integers(190, 230, size=(height, width - edge_x, 3))
    return photo


def test_color_filter_matches_the_papers_algorithm() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    src = rng.random((30, 40), dtype=np.float32)
    for radius, eps in [(1, 1e-3), (3, 1e-2)]:
        ours = guided_filter(photo, src, radius, eps)
        assert ours.shape == (30, 40) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, reference_color_filter(photo, src, radius, eps), atol=2e-5)


def test_gray_filter_matches_the_papers_algorithm() -> None:
    rng = np.random.default_rng(2)
    photo = rng.integers(0, 256, size=(25, 33, 3), dtype=np.uint8)
    src = rng.random((25, 33), dtype=np.float32)
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255
    mean_i, mean_p = window_mean(gray, 2), window_mean(src.astype(np.float64), 2)
    a = (window_mean(gray * src, 2) - mean_i * mean_p) / (window_mean(gray * gray, 2) - mean_i ** 2 + 1e-3)
    expected = window_mean(a, 2) * gray + window_mean(mean_p - a * mean_i, 2)
    np.testing.assert_allclose(guided_filter(photo, src, 2, 1e-3, guide="gray"), expected, atol=2e-5)


@pytest.mark.parametrize("guide", ["color", "gray"])
@pytest.mark.parametrize("size", [(64, 48), (33, 17), (600, 450)], ids=["small", "odd", "fast-path"])
def test_output_has_the_photos_shape_and_stays_in_range(guide: str, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    width, height = size
    photo = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    prob = rng.random((24, 24), dtype=np.float32)
    out = guided_upsample(prob, photo, guide=guide)  # type: ignore[arg-type]
    assert out.shape == (height, width) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    as_bytes = guided_upsample(prob, photo, guide=guide, dtype=np.uint8)  # type: ignore[arg-type]
    assert as_bytes.shape == (height, width) and as_bytes.dtype == np.uint8
    np.testing.assert_allclose(as_bytes / 255.0, out, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("size", [(80, 60), (600, 400)], ids=["small", "fast-path"])
def test_a_constant_probability_stays_constant(value: float, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(4)
    photo = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)  # any texture at all
    out = guided_upsample(np.full((16, 16), value, np.float32), photo)
    np.testing.assert_allclose(out, value, atol=1e-4)


def test_edges_follow_the_photo_better_than_bilinear() -> None:
    """The model's map is coarse and its edge sits a little off the photo's (as a small network's does): the
    refined map must put its 0.5 crossing on the photo's edge and be sharper there than bilinear."""
    photo = edge_photo(edge_x=41)
    height, width = photo.shape[:2]
    small = np.zeros((8, 12), np.float32)
    small[:, 6:] = 1.0  # a step at 48 photo pixels after up-sampling: 7 pixels right of the photo's edge
    small = cv2.GaussianBlur(small, (3, 3), 0.8)
    bilinear = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    refined = guided_upsample(small, photo)

    def crossing(row: np.ndarray) -> int:
        return int(np.argmax(row > 0.5))

    assert all(abs(crossing(row) - 41) <= 1 for row in refined), [crossing(row) for row in refined]
    assert abs(crossing(bilinear[height // 2]) - 41) >= 4  # the premise: bilinear is off
    near = slice(41 - 10, 41 + 10)  # the columns around the edge, where the two differ
    truth = (np.arange(width)[near] >= 41).astype(np.float32)
    error_refined, error_bilinear = np.abs(refined[:, near] - truth).mean(), np.abs(bilinear[:, near] - truth).mean()
    assert error_refined < 0.5 * error_bilinear, (error_refined, error_bilinear)
    # Sharper: most of the climb happens within two pixels of the photo's edge; bilinear barely moves there.
    middle, plain = refined[height // 2], bilinear[height // 2]
    assert middle[43] - middle[39] > 0.5 and plain[43] - plain[39] < 0.3, (middle[36:46], plain[36:46])


def test_the_fast_path_agrees_with_the_full_size_filter() -> None:
    """Wide windows and big photos get their coefficients on a smaller photo: the same answer up to smoothing."""
    photo = cv2.resize(edge_photo(96, 64), (480, 320), interpolation=cv2.INTER_NEAREST)
    prob = cv2.GaussianBlur((np.arange(24) >= 11).astype(np.float32)[None].repeat(16, 0), (3, 3), 0.8)
    radius = default_radius(prob.shape, photo.shape[:2])
    full = np.clip(guided_filter(photo, cv2.resize(prob, (480, 320), interpolation=cv2.INTER_LINEAR), radius), 0, 1)
    for work_pixels in (10**9, 480 * 320 // 64):  # the radius alone shrinks the work size; then the pixel cap
        fast = guided_upsample(prob, photo, radius=radius, work_pixels=work_pixels)
        assert np.abs(full - fast).mean() < 0.01


def test_contrast_steepens_around_one_half_and_keeps_the_crossing() -> None:
    photo = edge_photo()
    prob = np.linspace(0.2, 0.8, 12, dtype=np.float32)[None].repeat(8, 0)
    plain = guided_upsample(prob, photo)
    steep = guided_upsample(prob, photo, contrast=4.0)
    np.testing.assert_array_equal(plain > 0.5, steep > 0.5)
    np.testing.assert_allclose(steep, np.clip((plain - 0.5) * 4 + 0.5, 0, 1), atol=1e-5)


def test_default_radius_is_in_photo_pixels() -> None:
    assert default_radius((192, 192), (375, 500)) == round(4 * 500 / 192)
    assert default_radius((192, 192), (100, 100)) == 2  # never below one pixel, even when down-sampling
    assert default_radius((192, 192), (10, 10)) == 1


def test_bad_shapes_are_refused() -> None:
    photo = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="prob"):
        guided_upsample(np.zeros((4, 4, 1), np.float32), photo)
    with pytest.raises(ValueError, match="photo"):
        guided_upsample(np.zeros((4, 4), np.float32), photo.astype(np.float32))
    with pytest.raises(ValueError, match="differ in size"):
        guided_filter(photo, np.zeros((9, 10), np.float32), 1)
