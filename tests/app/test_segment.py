"""POST /segment, the happy paths: the JSON answer, PNG answers, every rendering, Dice, thresholds, EXIF and
every image mode and format the service promises to read."""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.helpers import (
    app_client,
    assert_photo_where_visible,
    b64_png,
    image_files,
    mask_array,
    open_png,
)
from tests.factories import blob_image, jpeg_bytes, png_bytes

W, H = 64, 48
IMAGE, TRIMAP = blob_image(W, H, seed=3)
PHOTO_PNG = png_bytes(IMAGE)  # lossless, so renderings can be compared pixel for pixel with IMAGE
PHOTO_JPEG = jpeg_bytes(IMAGE)


@pytest.fixture(scope="module")
def api(tiny_checkpoint: Path) -> Iterator[TestClient]:
    """One warm app for the whole module: starting one costs seconds on a shared 2-core CPU."""
    with app_client(tiny_checkpoint) as client:
        yield client


def segment(client: TestClient, data: bytes = PHOTO_JPEG, *, name: str = "pet.jpg", mime: str = "image/jpeg",
            ground_truth: bytes | None = None, **form: str) -> dict:
    response = client.post("/segment", files=image_files(data, name, mime, ground_truth), data=form)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def mixed(api: TestClient) -> tuple[str, np.ndarray]:
    """A threshold at which the (randomly initialised) model's mask holds pet and background, and that mask.

    Thresholding at the mean probability splits any non-constant map, so Dice checks are not trivially 0 or 1.
    """
    mean = segment(api, PHOTO_PNG, name="pet.png", mime="image/png")["foreground_probability"]
    threshold = f"{mean:.6f}"
    body = segment(api, PHOTO_PNG, name="pet.png", mime="image/png", threshold=threshold)
    mask = mask_array(body)
    assert 0 < np.count_nonzero(mask) < mask.size, "precondition: the mask must hold pet and background"
    return threshold, mask


# --- the JSON answer ----------------------------------------------------------------------------------------

def test_segment_json_has_every_field_with_valid_values(api: TestClient) -> None:
    body = segment(api)
    assert set(body) >= {"width", "height", "threshold", "foreground_probability", "foreground_fraction",
                         "dice", "mask_png", "output", "output_png", "model", "inference_ms"}
    assert (body["width"], body["height"]) == (W, H)
    assert body["threshold"] == 0.5
    assert 0.0 <= body["foreground_probability"] <= 1.0
    assert 0.0 <= body["foreground_fraction"] <= 1.0
    assert body["dice"] is None
    assert body["output"] == "mask" and body["output_png"] is None
    assert body["model"]["arch"] == "resnet34_unet"
    assert isinstance(body["inference_ms"], float) and body["inference_ms"] >= 0


def test_segment_json_mask_png_is_single_channel_0_255_at_image_size(api: TestClient) -> None:
    body = segment(api)
    mask = b64_png(body["mask_png"])
    assert mask.mode == "L"
    assert mask.size == (W, H)
    values = np.asarray(mask)
    assert set(np.unique(values).tolist()) <= {0, 255}
    assert np.count_nonzero(values) / values.size == pytest.approx(body["foreground_fraction"], abs=1e-9)


def test_segment_json_model_sha256_matches_checkpoint_file(api: TestClient, tiny_checkpoint: Path) -> None:
    import hashlib

    body = segment(api)
    assert body["model"]["checkpoint_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()


def test_segment_format_json_overrides_accept_png(api: TestClient) -> None:
    response = api.post("/segment?format=json", files=image_files(PHOTO_JPEG),
                        headers={"Accept": "image/png"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["width"] == W


# --- PNG answers --------------------------------------------------------------------------------------------

def assert_png_answer(response, size: tuple[int, int] = (W, H)) -> Image.Image:  # noqa: ANN001
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = open_png(response.content)
    assert image.size == size
    assert 0.0 <= float(response.headers["x-foreground-probability"]) <= 1.0
    assert 0.0 <= float(response.headers["x-foreground-fraction"]) <= 1.0
    return image


def test_segment_accept_png_returns_png_with_headers_and_no_dice(api: TestClient) -> None:
    response = api.post("/segment", files=image_files(PHOTO_JPEG), headers={"Accept": "image/png"})
    image = assert_png_answer(response)
    assert image.mode == "L"
    assert "x-dice" not in response.headers


@pytest.mark.parametrize("accept, content_type", [
    ("image/png;q=0.5, application/json", "application/json"),
    ("image/png;q=0, */*", "application/json"),
    ("image/*", "image/png"),
    ("application/json;q=0.1, image/png", "image/png"),
])
def test_segment_accept_quality_values_choose_the_answer(api: TestClient, accept: str, content_type: str) -> None:
    response = api.post("/segment", files=image_files(PHOTO_JPEG), headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type


def test_segment_format_png_query_returns_png_with_headers(api: TestClient) -> None:
    response = api.post("/segment?format=png", files=image_files(PHOTO_JPEG))
    image = assert_png_answer(response)
    assert set(np.unique(np.asarray(image)).tolist()) <= {0, 255}
    assert "x-dice" not in response.headers


def test_segment_png_answer_has_x_dice_with_ground_truth(api: TestClient) -> None:
    truth = png_bytes(np.where(TRIMAP == 1, 255, 0).astype(np.uint8))
    response = api.post("/segment?format=png", files=image_files(PHOTO_JPEG, ground_truth=truth))
    assert_png_answer(response)
    assert 0.0 <= float(response.headers["x-dice"]) <= 1.0


def test_segment_png_headers_agree_with_json(api: TestClient) -> None:
    body = segment(api, PHOTO_PNG, name="pet.png", mime="image/png")
    response = api.post("/segment?format=png", files=image_files(PHOTO_PNG, "pet.png", "image/png"))
    assert_png_answer(response)
    fraction = float(response.headers["x-foreground-fraction"])
    assert fraction == pytest.approx(body["foreground_fraction"], abs=1e-6)
    assert np.array_equal(np.asarray(open_png(response.content)), mask_array(body))


# --- every rendering ----------------------------------------------------------------------------------------

def rendering(client: TestClient, output: str, threshold: str = "0.5") -> tuple[Image.Image, np.ndarray]:
    """The rendering for ``output`` (from a lossless upload) and the mask, both from one JSON answer."""
    body = segment(client, PHOTO_PNG, name="pet.png", mime="image/png", output=output, threshold=threshold)
    assert body["output"] == output
    rendered = b64_png(body["output_png"]) if output != "mask" else b64_png(body["mask_png"])
    return rendered, mask_array(body)


def test_segment_output_mask_is_L_0_255(api: TestClient) -> None:
    image, mask = rendering(api, "mask")
    assert image.mode == "L" and image.size == (W, H)
    assert set(np.unique(np.asarray(image)).tolist()) <= {0, 255}
    assert np.array_equal(np.asarray(image), mask)


def test_segment_output_probability_is_L_consistent_with_mask(api: TestClient, mixed: tuple[str, np.ndarray]
                                                             ) -> None:
    threshold, _ = mixed
    image, mask = rendering(api, "probability", threshold)
    assert image.mode == "L" and image.size == (W, H)
    prob = np.asarray(image).astype(int)
    level = float(threshold) * 255.0
    assert (prob[mask == 255] >= np.floor(level)).all()  # pet pixels: probability above the threshold
    assert (prob[mask == 0] <= np.ceil(level) + 1).all()  # background: at or below it (8-bit rounding)


def test_segment_output_overlay_is_rgb_tinting_only_the_mask(api: TestClient, mixed: tuple[str, np.ndarray]
                                                            ) -> None:
    threshold, _ = mixed
    image, mask = rendering(api, "overlay", threshold)
    assert image.mode == "RGB" and image.size == (W, H)
    overlay = np.asarray(image)
    background = mask == 0
    assert np.array_equal(overlay[background], IMAGE[background])
    assert not np.array_equal(overlay[~background], IMAGE[~background])


def test_segment_output_cutout_is_rgba_with_alpha_equal_to_mask(api: TestClient, mixed: tuple[str, np.ndarray]
                                                               ) -> None:
    threshold, _ = mixed
    image, mask = rendering(api, "cutout", threshold)
    assert image.mode == "RGBA" and image.size == (W, H)
    cutout = np.asarray(image)
    assert np.array_equal(cutout[:, :, 3], mask)
    assert_photo_where_visible(cutout, IMAGE)


@pytest.mark.parametrize("output, mode", [("mask", "L"), ("probability", "L"), ("overlay", "RGB"),
                                          ("cutout", "RGBA")])
def test_segment_png_answer_is_the_requested_output(api: TestClient, output: str, mode: str) -> None:
    response = api.post("/segment?format=png", files=image_files(PHOTO_PNG, "pet.png", "image/png"),
                        data={"output": output})
    image = assert_png_answer(response)
    assert image.mode == mode


# --- Dice against ground truth ------------------------------------------------------------------------------

def encode_truth(mask: np.ndarray, encoding: str) -> bytes:
    pet = mask == 255
    if encoding == "0/255":
        return png_bytes(mask.astype(np.uint8))
    if encoding == "0/1":
        return png_bytes(pet.astype(np.uint8))
    if encoding == "trimap":
        return png_bytes(np.where(pet, 1, 2).astype(np.uint8))
    raise AssertionError(encoding)


@pytest.mark.parametrize("encoding", ["0/255", "0/1", "trimap"])  # more encodings: test_imaging.py
def test_segment_dice_is_1_for_own_mask_as_ground_truth(api: TestClient, mixed: tuple[str, np.ndarray],
                                                        encoding: str) -> None:
    threshold, mask = mixed
    body = segment(api, PHOTO_PNG, name="pet.png", mime="image/png", threshold=threshold,
                   ground_truth=encode_truth(mask, encoding))
    assert body["dice"] == 1.0


def test_segment_dice_is_0_for_empty_ground_truth_and_nonempty_prediction(api: TestClient) -> None:
    body = segment(api, ground_truth=png_bytes(np.zeros((H, W), dtype=np.uint8)), threshold="0")
    assert body["foreground_fraction"] > 0
    assert body["dice"] == 0.0


def test_segment_dice_of_inverted_mask_is_0(api: TestClient, mixed: tuple[str, np.ndarray]) -> None:
    threshold, mask = mixed
    body = segment(api, PHOTO_PNG, name="pet.png", mime="image/png", threshold=threshold,
                   ground_truth=png_bytes((255 - mask).astype(np.uint8)))
    assert body["dice"] == 0.0


def test_segment_dice_matches_formula_for_trimap_ground_truth(api: TestClient, mixed: tuple[str, np.ndarray]
                                                             ) -> None:
    threshold, mask = mixed
    body = segment(api, PHOTO_PNG, name="pet.png", mime="image/png", threshold=threshold,
                   ground_truth=png_bytes(TRIMAP))
    pred, truth = mask == 255, (TRIMAP == 1) | (TRIMAP == 3)  # border counts as pet by default
    expected = 2 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + np.count_nonzero(truth))
    assert body["dice"] == pytest.approx(expected, abs=1e-9)


# --- thresholds ---------------------------------------------------------------------------------------------

def test_segment_threshold_0_marks_nearly_everything(api: TestClient) -> None:
    body = segment(api, threshold="0")
    assert body["threshold"] == 0.0
    assert body["foreground_fraction"] >= 0.99


def test_segment_threshold_1_marks_nothing(api: TestClient) -> None:
    body = segment(api, threshold="1")
    assert body["threshold"] == 1.0
    assert body["foreground_fraction"] == 0.0
    assert np.count_nonzero(mask_array(body)) == 0


# --- EXIF orientation ---------------------------------------------------------------------------------------

def rotated_jpeg(width: int = 40, height: int = 30, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(blob_image(width, height, seed=5)[0], exif=exif.tobytes())


def test_segment_exif_orientation_6_swaps_width_and_height(api: TestClient) -> None:
    body = segment(api, rotated_jpeg())
    assert (body["width"], body["height"]) == (30, 40)
    assert b64_png(body["mask_png"]).size == (30, 40)


def test_segment_exif_orientation_6_applies_to_cutout_pixels(api: TestClient) -> None:
    response = api.post("/segment?format=png", files=image_files(rotated_jpeg()), data={"output": "cutout"})
    assert response.status_code == 200
    cutout = open_png(response.content)
    assert cutout.size == (30, 40)
    upright = np.asarray(Image.fromarray(blob_image(40, 30, seed=5)[0]).transpose(Image.Transpose.ROTATE_270))
    rgba = np.asarray(cutout)
    visible = rgba[:, :, 3] > 0
    assert visible.sum() > 100
    difference = np.abs(rgba[:, :, :3][visible].astype(int) - upright[visible].astype(int))
    assert difference.mean() < 12  # JPEG noise only


# --- image modes and formats --------------------------------------------------------------------------------

def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _rgb() -> Image.Image:
    return Image.fromarray(IMAGE)


def _palette_with_transparency() -> bytes:
    return _save(_rgb().convert("P"), "PNG", transparency=0)


def _sixteen_bit() -> bytes:
    gray = np.asarray(_rgb().convert("L")).astype(np.uint16) * 257
    image = Image.fromarray(gray)
    assert image.mode == "I;16"
    return _save(image, "PNG")


def _animated_gif() -> bytes:
    first, second = _rgb(), Image.fromarray(255 - IMAGE)
    return _save(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


UPLOADS: dict[str, Callable[[], tuple[bytes, str, str]]] = {
    "mode 1": lambda: (_save(_rgb().convert("1"), "PNG"), "a.png", "image/png"),
    "mode L": lambda: (_save(_rgb().convert("L"), "PNG"), "a.png", "image/png"),
    "mode LA": lambda: (_save(_rgb().convert("LA"), "PNG"), "a.png", "image/png"),
    "mode P transparency": lambda: (_palette_with_transparency(), "a.png", "image/png"),
    "mode I;16": lambda: (_sixteen_bit(), "a.png", "image/png"),
    "mode RGBA": lambda: (_save(_rgb().convert("RGBA"), "PNG"), "a.png", "image/png"),
    "mode CMYK jpeg": lambda: (_save(_rgb().convert("CMYK"), "JPEG"), "a.jpg", "image/jpeg"),
    "mode YCbCr jpeg": lambda: (_save(_rgb().convert("YCbCr"), "JPEG"), "a.jpg", "image/jpeg"),
    "png named .jpg": lambda: (PHOTO_PNG, "a.jpg", "image/jpeg"),
    "animated gif": lambda: (_animated_gif(), "a.gif", "image/gif"),
    "webp": lambda: (_save(_rgb(), "WEBP"), "a.webp", "image/webp"),
    "bmp": lambda: (_save(_rgb(), "BMP"), "a.bmp", "image/bmp"),
    "tiff": lambda: (_save(_rgb(), "TIFF"), "a.tiff", "image/tiff"),
}


@pytest.mark.parametrize("kind", list(UPLOADS))
def test_segment_reads_every_mode_and_format_at_its_size(api: TestClient, kind: str) -> None:
    data, name, mime = UPLOADS[kind]()
    body = segment(api, data, name=name, mime=mime)
    assert (body["width"], body["height"]) == (W, H)
    assert b64_png(body["mask_png"]).size == (W, H)


def test_segment_animated_gif_uses_first_frame(api: TestClient) -> None:
    response = api.post("/segment?format=png", files=image_files(_animated_gif(), "a.gif", "image/gif"),
                        data={"output": "cutout"})
    assert response.status_code == 200
    rgb = np.asarray(open_png(response.content))[:, :, :3].astype(int)
    first = np.abs(rgb - IMAGE.astype(int)).mean()
    second = np.abs(rgb - (255 - IMAGE).astype(int)).mean()
    assert first < second
    assert first < 20  # only GIF palette quantisation separates them
