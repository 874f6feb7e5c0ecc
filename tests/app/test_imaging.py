"""Unit tests for app/imaging.py: decoding uploads and ground truth, and encoding PNGs. No model (the renderings
are tested in test_rendering.py)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.errors import ApiError
from app.imaging import decode_ground_truth, decode_image, encode_png
from tests.factories import blob_image, jpeg_bytes, png_bytes

LIMIT = 20_000_000
W, H = 40, 30
IMAGE, TRIMAP = blob_image(W, H, seed=4)


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


# --- decode_image -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    return jpeg_bytes(blob_image(2000, 1500, seed=0)[0], quality=80)


def test_decode_image_draft_gives_smaller_rgb_but_original_size(large_jpeg: bytes) -> None:
    decoded = decode_image(large_jpeg, max_pixels=LIMIT, draft_size=64)
    assert (decoded.width, decoded.height) == (2000, 1500)
    height, width, channels = decoded.rgb.shape
    assert channels == 3 and decoded.rgb.dtype == np.uint8
    assert width < 2000 and height < 1500
    assert width >= 64 and height >= 64  # never below the size asked for
    assert width / height == pytest.approx(2000 / 1500, rel=0.02)
    assert decoded.format == "JPEG"


def test_decode_image_without_draft_is_full_size(large_jpeg: bytes) -> None:
    decoded = decode_image(large_jpeg, max_pixels=LIMIT)
    assert decoded.rgb.shape == (1500, 2000, 3)
    assert (decoded.width, decoded.height) == (2000, 1500)


def test_decode_image_draft_ignored_for_png() -> None:
    decoded = decode_image(png_bytes(IMAGE), max_pixels=LIMIT, draft_size=8)
    assert decoded.rgb.shape == (H, W, 3)
    assert np.array_equal(decoded.rgb, IMAGE)
    assert decoded.format == "PNG"


def test_decode_image_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(jpeg_bytes(IMAGE, exif=exif.tobytes()), max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == (H, W)
    assert decoded.rgb.shape == (W, H, 3)


def test_decode_image_exif_orientation_with_draft_keeps_upright_size(large_jpeg: bytes) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = jpeg_bytes(blob_image(2000, 1500, seed=0)[0], quality=80, exif=exif.tobytes())
    decoded = decode_image(data, max_pixels=LIMIT, draft_size=64)
    assert (decoded.width, decoded.height) == (1500, 2000)
    assert decoded.rgb.shape[0] > decoded.rgb.shape[1]  # the drafted pixels are upright too


def test_decode_image_sixteen_bit_is_scaled_to_8_bit() -> None:
    ramp = np.tile(np.linspace(0, 4095, W).astype(np.uint16), (H, 1))  # 12-bit data in a 16-bit PNG
    decoded = decode_image(png_bytes(ramp), max_pixels=LIMIT)
    assert decoded.rgb.shape == (H, W, 3)
    assert decoded.rgb.max() == 255 and decoded.rgb.min() == 0


def test_decode_image_transparency_becomes_white() -> None:
    rgba = np.dstack([IMAGE, np.zeros((H, W), dtype=np.uint8)])
    decoded = decode_image(png_bytes(rgba), max_pixels=LIMIT)
    assert (decoded.rgb == 255).all()


def test_decode_image_over_max_pixels_is_413() -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(png_bytes(IMAGE), max_pixels=W * H - 1)
    assert caught.value.status_code == 413
    assert caught.value.detail == f"image is {W}x{H} = {W * H} pixels; the limit is {W * H - 1}"


def test_decode_image_empty_is_400() -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(b"", max_pixels=LIMIT, field="photo")
    assert (caught.value.status_code, caught.value.detail) == (400, "photo is empty")


def test_decode_image_unknown_bytes_is_415() -> None:
    with pytest.raises(ApiError) as caught:
        decode_image(b"GIF? no, just text", max_pixels=LIMIT)
    assert caught.value.status_code == 415
    assert "not an image format" in caught.value.detail


def test_decode_image_truncated_jpeg_is_400() -> None:
    data = jpeg_bytes(blob_image(320, 240, seed=9)[0])
    with pytest.raises(ApiError) as caught:
        decode_image(data[: len(data) // 3], max_pixels=LIMIT)
    assert caught.value.status_code == 400
    assert "truncated or corrupt" in caught.value.detail


# --- decode_ground_truth ------------------------------------------------------------------------------------

PET = TRIMAP == 1
EXPECTED_WITH_BORDER = (TRIMAP == 1) | (TRIMAP == 3)


def truth(data: bytes, border_is_pet: bool = True) -> np.ndarray:
    return decode_ground_truth(data, size=(W, H), max_pixels=LIMIT, border_is_pet=border_is_pet)


def one_bit_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def palette_png(mask: np.ndarray) -> bytes:
    image = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("encoding, data", [
    ("0/255", png_bytes(np.where(PET, 255, 0).astype(np.uint8))),
    ("0/1", png_bytes(PET.astype(np.uint8))),
    ("1-bit", one_bit_png(PET)),
    ("palette 0/1", palette_png(PET.astype(np.uint8))),
    ("rgb 0/255", png_bytes(np.repeat(np.where(PET, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2))),
    ("16-bit 0/1", png_bytes(PET.astype(np.uint16))),
], ids=lambda value: value if isinstance(value, str) else "")
def test_decode_ground_truth_binary_encodings(encoding: str, data: bytes) -> None:
    mask = truth(data)
    assert mask.dtype == bool and mask.shape == (H, W)
    assert np.array_equal(mask, PET)


def test_decode_ground_truth_trimap_border_is_pet() -> None:
    assert np.array_equal(truth(png_bytes(TRIMAP), border_is_pet=True), EXPECTED_WITH_BORDER)


def test_decode_ground_truth_trimap_border_is_background() -> None:
    assert np.array_equal(truth(png_bytes(TRIMAP), border_is_pet=False), PET)


def test_decode_ground_truth_trimap_without_border() -> None:
    assert np.array_equal(truth(png_bytes(np.where(PET, 1, 2).astype(np.uint8))), PET)


def test_decode_ground_truth_all_zero_is_empty() -> None:
    assert not truth(png_bytes(np.zeros((H, W), dtype=np.uint8))).any()


def test_decode_ground_truth_wrong_size_is_422() -> None:
    with pytest.raises(ApiError) as caught:
        decode_ground_truth(png_bytes(TRIMAP), size=(W + 1, H), max_pixels=LIMIT)
    assert caught.value.status_code == 422
    assert caught.value.detail == f"ground_truth is {W}x{H} but the image is {W + 1}x{H}; they must match"


def test_decode_ground_truth_gradient_is_422_listing_values() -> None:
    gradient = np.tile(np.arange(W, dtype=np.uint8) * 5, (H, 1))
    with pytest.raises(ApiError) as caught:
        truth(png_bytes(gradient))
    assert caught.value.status_code == 422
    assert caught.value.detail == ("ground_truth is not a mask: expected values 0/255, 0/1 or trimap 1/2/3, "
                                   "found [0, 5, 10, 15, 20, 25, 30, 35]...")


def test_decode_ground_truth_over_max_pixels_is_413() -> None:
    with pytest.raises(ApiError) as caught:
        decode_ground_truth(png_bytes(TRIMAP), size=(W, H), max_pixels=100)
    assert caught.value.status_code == 413
    assert caught.value.detail.startswith(f"ground_truth is {W}x{H}")


# --- encode_png -----------------------------------------------------------------------------------------------

def test_encode_png_round_trips() -> None:
    image = open_png(encode_png(IMAGE))
    assert np.array_equal(np.asarray(image), IMAGE)
