"""The 8-bit photo-size path agrees with the float reference it replaced, and mask PNGs stay 8-bit 0/255."""
from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from app.imaging import encode_mask_png
from app.postprocess import dice_score, to_full_size
from models.imaging.pngwrite import adler32_combine, encode_gray_png


def _smooth_map(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), 6)
    return ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_mask_agrees_with_the_float_reference(threshold: float) -> None:
    small = _smooth_map()
    size = (640, 480)
    result = to_full_size(small, size, threshold)
    reference = cv2.resize(small, size, interpolation=cv2.INTER_LINEAR) > threshold
    assert result.mask.shape == result.probability.shape == (480, 640)
    assert 0.1 < reference.mean() < 0.9  # the threshold cuts through the map
    assert np.mean(result.mask_bool != reference) < 0.002  # only pixels within 1/255 of the threshold move
    assert result.foreground_fraction == pytest.approx(reference.mean(), abs=0.002)
    assert set(np.unique(result.mask).tolist()) == {0, 255}


def test_mean_probability_is_the_unquantised_mean() -> None:
    small = _smooth_map()
    result = to_full_size(small, (300, 200), 0.5)
    assert result.foreground_probability == pytest.approx(float(small.mean(dtype=np.float64)), abs=1e-12)
    full = cv2.resize(small, (300, 200), interpolation=cv2.INTER_LINEAR)
    assert result.foreground_probability == pytest.approx(float(full.mean()), abs=0.01)


def test_extreme_thresholds() -> None:
    small = np.full((8, 8), 0.4, np.float32)
    assert to_full_size(small, (8, 8), 0.0).foreground_fraction == 1.0
    assert to_full_size(small, (8, 8), 1.0).foreground_fraction == 0.0
    assert to_full_size(small, (8, 8), 0.39).foreground_fraction == 1.0
    assert to_full_size(small, (8, 8), 0.41).foreground_fraction == 0.0


def test_same_size_needs_no_resize() -> None:
    small = _smooth_map(32)
    result = to_full_size(small, (32, 32), 0.5)
    np.testing.assert_array_equal(result.probability, np.round(small * 255).astype(np.uint8))


@pytest.mark.parametrize("mask", [np.eye(5, 7, dtype=bool), np.eye(5, 7, dtype=np.uint8) * 255,
                                  (np.eye(10, 14, dtype=np.uint8) * 255)[::2, ::2]],  # a strided view
                         ids=["bool", "uint8", "strided"])
def test_mask_png_is_8_bit_grayscale_0_255(mask: np.ndarray) -> None:
    image = Image.open(io.BytesIO(encode_mask_png(mask)))
    assert image.format == "PNG" and image.mode == "L" and image.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(image), np.eye(5, 7, dtype=np.uint8) * 255)


def test_one_pixel_mask_png() -> None:
    image = Image.open(io.BytesIO(encode_mask_png(np.ones((1, 1), bool))))
    assert image.size == (1, 1) and int(np.asarray(image)[0, 0]) == 255


def test_dice_score() -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert dice_score(a, b) == 1.0  # nothing to find, nothing found
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice_score(a, b) == pytest.approx(0.5)


# --- the multi-threaded PNG writer ----------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (301, 257), (1000, 33)])
def test_threaded_png_decodes_to_the_same_pixels(threads: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 31 + threads)
    image = (rng.random(shape) > 0.5).astype(np.uint8) * 255
    image[: shape[0] // 2] = rng.integers(0, 256, image[: shape[0] // 2].shape, dtype=np.uint8)  # not only 0/255
    png = encode_gray_png(image, threads)
    decoded = Image.open(io.BytesIO(png))
    decoded.load()  # Pillow checks the chunk CRCs
    assert decoded.mode == "L" and decoded.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(decoded), image)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), image)


def test_threaded_png_stream_checksum_is_valid() -> None:
    image = np.tile(np.arange(256, dtype=np.uint8), (64, 3))
    png = encode_gray_png(image, 3)
    start = png.index(b"IDAT") + 4
    length = int.from_bytes(png[start - 8:start - 4], "big")
    raw = zlib.decompress(png[start:start + length])  # raises on a wrong Adler-32
    assert len(raw) == image.shape[0] * (image.shape[1] + 1)


def test_adler32_combine_matches_zlib() -> None:
    rng = np.random.default_rng(0)
    for first_len, second_len in [(0, 5), (5, 0), (1, 1), (70_000, 300_000)]:
        a = rng.integers(0, 256, first_len, dtype=np.uint8).tobytes()
        b = rng.integers(0, 256, second_len, dtype=np.uint8).tobytes()
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


def test_threaded_png_rejects_what_is_not_2d_uint8() -> None:
    with pytest.raises(ValueError, match="HxW uint8"):
        encode_gray_png(np.zeros((4, 4, 3), np.uint8), 2)


def test_large_masks_take_the_threaded_writer_and_stay_identical() -> None:
    yy, xx = np.mgrid[0:1500, 0:1400]
    mask = ((xx - 700) ** 2 + (yy - 750) ** 2 < 500**2).astype(np.uint8) * 255  # 2.1 MP: above the cut-over
    image = Image.open(io.BytesIO(encode_mask_png(mask)))
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), mask)
