"""POST /segment with bad input: every refusal is a 4xx (never a 500) whose detail says what was wrong."""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.helpers import app_client, image_files
from tests.factories import blob_image, jpeg_bytes, png_bytes

W, H = 64, 48
IMAGE, TRIMAP = blob_image(W, H, seed=7)
PHOTO = jpeg_bytes(IMAGE)
MASK = png_bytes(np.where(TRIMAP == 1, 255, 0).astype(np.uint8))


@pytest.fixture(scope="module")
def api(tiny_checkpoint: Path) -> Iterator[TestClient]:
    with app_client(tiny_checkpoint) as client:
        yield client


def detail(response) -> str:  # noqa: ANN001
    assert response.headers["content-type"].startswith("application/json"), response.headers
    value = response.json()["detail"]
    assert isinstance(value, str), value
    return value


def validation_errors(response) -> list[dict]:  # noqa: ANN001
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert isinstance(errors, list) and errors
    return errors


# --- unreadable images --------------------------------------------------------------------------------------

def test_segment_empty_image_is_400_empty(api: TestClient) -> None:
    response = api.post("/segment", files=image_files(b""))
    assert response.status_code == 400
    assert detail(response) == "image is empty"


@pytest.mark.parametrize("payload", [b"hello, this is plain text and not a photo\n" * 4,
                                     b"<!doctype html><html><body><img src=x></body></html>",
                                     b'{"image": "not really"}'], ids=["text", "html", "json"])
def test_segment_non_image_bytes_is_415(api: TestClient, payload: bytes) -> None:
    response = api.post("/segment", files=image_files(payload, "pet.jpg", "image/jpeg"))
    assert response.status_code == 415
    assert "not an image format this service reads" in detail(response)


def test_segment_unsupported_image_format_is_415_naming_it(api: TestClient) -> None:
    buffer = io.BytesIO()
    Image.fromarray(IMAGE).save(buffer, format="PPM")
    files = image_files(buffer.getvalue(), "pet.ppm", "image/x-portable-pixmap")
    response = api.post("/segment", files=files)
    assert response.status_code == 415
    assert detail(response).startswith("image is PPM")


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_segment_truncated_image_is_400_truncated_or_corrupt(api: TestClient, kind: str) -> None:
    big = blob_image(320, 240, seed=1)[0]
    data = jpeg_bytes(big) if kind == "jpeg" else png_bytes(big)
    response = api.post("/segment", files=image_files(data[: len(data) // 2]))
    assert response.status_code == 400
    assert "truncated or corrupt" in detail(response)


def test_segment_corrupt_png_header_is_400_naming_the_format(api: TestClient) -> None:
    data = bytearray(png_bytes(IMAGE))
    data[20:40] = b"\xff" * 20  # height, bit depth, colour type, CRC: Pillow cannot identify it any more
    response = api.post("/segment", files=image_files(bytes(data), "a.png", "image/png"))
    assert response.status_code == 400
    assert detail(response) == "image starts like a PNG file but its header is corrupt"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, reading the fake TIFF header
@pytest.mark.parametrize("head, name", [(b"\xff\xd8\xff\xe0", "JPEG"), (b"GIF89a", "GIF"),
                                        (b"RIFF\x10\x00\x00\x00WEBP", "WebP"), (b"II*\x00", "TIFF")])
def test_segment_known_signature_with_garbage_after_it_is_400(api: TestClient, head: bytes, name: str
                                                             ) -> None:
    response = api.post("/segment", files=image_files(head + b"\x00\x01" * 7, "a.bin", "image/jpeg"))
    assert response.status_code == 400
    assert detail(response) == f"image starts like a {name} file but its header is corrupt"


# --- form validation ----------------------------------------------------------------------------------------

def test_segment_photo_under_another_field_name_is_422_naming_the_right_one(api: TestClient) -> None:
    response = api.post("/segment", files={"photo": ("pet.jpg", PHOTO, "image/jpeg")})
    errors = validation_errors(response)
    assert [(e["loc"], e["type"]) for e in errors] == [(["body", "photo"], "extra_forbidden")], errors
    assert "did you mean image?" in errors[0]["msg"], errors


@pytest.mark.parametrize("field, meant", [("mask", "ground_truth"), ("treshold", "threshold"),
                                          ("crop-margin", "crop_margin")])
def test_segment_unknown_field_is_422_not_silently_ignored(api: TestClient, field: str, meant: str) -> None:
    """``-F mask=@truth.png`` used to answer 200 with ``"dice": null``: the field was dropped without a word."""
    response = api.post("/segment", files={**image_files(PHOTO), field: ("truth.png", MASK, "image/png")})
    errors = validation_errors(response)
    assert [(e["loc"], e["type"]) for e in errors] == [(["body", field], "extra_forbidden")], errors
    assert f"did you mean {meant}?" in errors[0]["msg"] and "ground_truth, image, image_url" in errors[0]["msg"]


def test_segment_every_unknown_field_is_named_once(api: TestClient) -> None:
    response = api.post("/segment", files=image_files(PHOTO), data={"colour": "red", "zzz": "1"})
    errors = validation_errors(response)
    assert [e["loc"] for e in errors] == [["body", "colour"], ["body", "zzz"]], errors
    assert "did you mean" not in errors[1]["msg"]


def test_segment_takes_exactly_the_form_fields_its_openapi_schema_documents(api: TestClient) -> None:
    from app.routes.segment import SEGMENT_FIELDS

    body = api.get("/openapi.json").json()["paths"]["/segment"]["post"]["requestBody"]["content"]
    ref = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    documented = api.get("/openapi.json").json()["components"]["schemas"][ref]["properties"]
    assert set(documented) == SEGMENT_FIELDS


def test_segment_no_body_is_422(api: TestClient) -> None:
    errors = validation_errors(api.post("/segment"))
    assert any(e["loc"][-1] == "image" for e in errors), errors


@pytest.mark.parametrize("threshold, error_type", [("1.5", "less_than_equal"), ("-0.1", "greater_than_equal"),
                                                   ("abc", "float_parsing")])
def test_segment_invalid_threshold_is_422(api: TestClient, threshold: str, error_type: str) -> None:
    response = api.post("/segment", files=image_files(PHOTO), data={"threshold": threshold})
    errors = validation_errors(response)
    assert [(e["loc"], e["type"]) for e in errors] == [(["body", "threshold"], error_type)], errors


def test_segment_unknown_output_is_422(api: TestClient) -> None:
    response = api.post("/segment", files=image_files(PHOTO), data={"output": "sketch"})
    errors = validation_errors(response)
    assert errors[0]["loc"] == ["body", "output"] and "'mask'" in errors[0]["msg"], errors


def test_segment_unknown_format_is_422(api: TestClient) -> None:
    errors = validation_errors(api.post("/segment?format=gif", files=image_files(PHOTO)))
    assert errors[0]["loc"] == ["query", "format"], errors


# --- ground truth -------------------------------------------------------------------------------------------

def test_segment_ground_truth_of_wrong_size_is_422_with_both_sizes(api: TestClient) -> None:
    truth = png_bytes(np.zeros((30, 40), dtype=np.uint8))
    response = api.post("/segment", files=image_files(PHOTO, ground_truth=truth))
    assert response.status_code == 422
    text = detail(response)
    assert "40x30" in text and f"{W}x{H}" in text


def test_segment_ground_truth_transposed_is_422(api: TestClient) -> None:
    truth = png_bytes(np.zeros((W, H), dtype=np.uint8))  # H x W swapped
    response = api.post("/segment", files=image_files(PHOTO, ground_truth=truth))
    assert response.status_code == 422
    assert f"ground_truth is {H}x{W} but the image is {W}x{H}" in detail(response)


def test_segment_ground_truth_gradient_is_422_not_a_mask(api: TestClient) -> None:
    gradient = np.tile(np.linspace(0, 200, W).astype(np.uint8), (H, 1))
    response = api.post("/segment", files=image_files(PHOTO, ground_truth=png_bytes(gradient)))
    assert response.status_code == 422
    assert "ground_truth is not a mask" in detail(response)


def test_segment_ground_truth_rgb_photo_is_422_not_a_mask(api: TestClient) -> None:
    response = api.post("/segment", files=image_files(PHOTO, ground_truth=png_bytes(IMAGE)))
    assert response.status_code == 422
    assert "not a mask" in detail(response)


def test_segment_ground_truth_jpeg_is_422_not_a_mask(api: TestClient) -> None:
    truth = jpeg_bytes(np.repeat(np.where(TRIMAP == 1, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2))
    response = api.post("/segment", files=image_files(PHOTO, ground_truth=truth))
    assert response.status_code == 422
    assert "not a mask" in detail(response)


def test_segment_empty_ground_truth_is_400(api: TestClient) -> None:
    response = api.post("/segment", files=image_files(PHOTO, ground_truth=b""))
    assert response.status_code == 400
    assert detail(response) == "ground_truth is empty"


def test_segment_ground_truth_not_an_image_is_415(api: TestClient) -> None:
    response = api.post("/segment", files=image_files(PHOTO, ground_truth=b"1 0 1 0\n0 1 0 1\n"))
    assert response.status_code == 415
    assert detail(response).startswith("ground_truth: not an image format")


# --- size limits --------------------------------------------------------------------------------------------

LIMIT = 50_000


@pytest.fixture(scope="module")
def small_limit(tiny_checkpoint: Path) -> Iterator[TestClient]:
    from app.config import Settings
    from app.main import create_app

    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", max_upload_bytes=LIMIT, _env_file=None)
    with TestClient(create_app(settings)) as client:
        yield client


def big_upload() -> bytes:
    data = png_bytes(np.random.default_rng(0).integers(0, 256, size=(160, 200, 3), dtype=np.uint8))
    assert len(data) > LIMIT
    return data


def test_segment_body_over_limit_with_content_length_is_413(small_limit: TestClient) -> None:
    response = small_limit.post("/segment", files=image_files(big_upload(), "a.png", "image/png"))
    assert int(response.request.headers["content-length"]) > LIMIT
    assert response.status_code == 413
    assert detail(response) == f"request body is larger than the limit of {LIMIT} bytes"


def test_segment_body_over_limit_chunked_is_413(small_limit: TestClient) -> None:
    boundary = "petsegboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    data = big_upload()

    def chunks() -> Iterator[bytes]:
        yield head
        for start in range(0, len(data), 8192):
            yield data[start:start + 8192]
        yield tail

    response = small_limit.post("/segment", content=chunks(),
                                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert detail(response) == f"request body is larger than the limit of {LIMIT} bytes"


def test_segment_body_under_limit_is_served(small_limit: TestClient) -> None:
    response = small_limit.post("/segment", files=image_files(PHOTO))
    assert len(PHOTO) < LIMIT
    assert response.status_code == 200
    assert response.json()["width"] == W


def bomb_png(size: int = 20_000) -> bytes:
    """A real 20000x20000 1-bit PNG of zeros: ~50 MB of pixels, tens of KB on the wire."""
    buffer = io.BytesIO()
    Image.new("1", (size, size)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = bomb_png()
    assert len(data) < 200_000
    return data


def test_segment_decompression_bomb_is_413_with_its_size(api: TestClient, bomb: bytes) -> None:
    response = api.post("/segment", files=image_files(bomb, "bomb.png", "image/png"))
    assert response.status_code == 413
    text = detail(response)
    assert "20000x20000" in text and "20000000" in text


def test_segment_decompression_bomb_as_ground_truth_is_413(api: TestClient, bomb: bytes) -> None:
    response = api.post("/segment", files=image_files(PHOTO, ground_truth=bomb))
    assert response.status_code == 413
    assert detail(response).startswith("ground_truth is 20000x20000")
