"""The service over httpx's TestClient with a real (small) model: answers, renderings, Dice, errors."""
from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.factories import blob_image, jpeg_bytes, png_bytes

IMAGE = blob_image(96, 72, seed=3)[0]


def upload(data: bytes, name: str = "pet.jpg", mime: str = "image/jpeg") -> dict:
    return {"image": (name, data, mime)}


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def segment_json(client: TestClient, data: bytes, **form: str) -> dict:
    response = client.post("/segment", files=upload(data), data=form)
    assert response.status_code == 200, response.text
    return response.json()


def test_segment_json_answer_has_every_field(client: TestClient) -> None:
    body = segment_json(client, jpeg_bytes(IMAGE))
    assert (body["width"], body["height"]) == (96, 72)
    assert body["threshold"] == 0.5
    assert 0.0 <= body["foreground_probability"] <= 1.0
    assert 0.0 <= body["foreground_fraction"] <= 1.0
    assert body["dice"] is None
    assert body["model"]["arch"] == "resnet34_unet"
    assert body["inference_ms"] >= 0
    mask = decode_png(base64.b64decode(body["mask_png"]))
    assert mask.mode == "L" and mask.size == (96, 72)
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values <= {0, 255}
    assert abs(np.mean(np.asarray(mask) == 255) - body["foreground_fraction"]) < 1e-9


def test_segment_png_answer_via_accept_header(client: TestClient) -> None:
    response = client.post("/segment", files=upload(jpeg_bytes(IMAGE)), headers={"Accept": "image/png"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert decode_png(response.content).size == (96, 72)
    assert 0.0 <= float(response.headers["x-foreground-probability"]) <= 1.0
    assert 0.0 <= float(response.headers["x-foreground-fraction"]) <= 1.0
    assert "x-dice" not in response.headers


def test_segment_png_answer_via_format_query(client: TestClient) -> None:
    response = client.post("/segment?format=png", files=upload(jpeg_bytes(IMAGE)))
    assert response.headers["content-type"] == "image/png"


@pytest.mark.parametrize(("output", "mode"), [("mask", "L"), ("probability", "L"), ("overlay", "RGB"),
                                              ("cutout", "RGBA")])
def test_segment_every_output_rendering(client: TestClient, output: str, mode: str) -> None:
    response = client.post("/segment?format=png", files=upload(png_bytes(IMAGE), "pet.png", "image/png"),
                           data={"output": output})
    assert response.status_code == 200, response.text
    image = decode_png(response.content)
    assert image.mode == mode and image.size == (96, 72)


def test_segment_cutout_alpha_is_the_mask(client: TestClient) -> None:
    data = png_bytes(IMAGE)
    body = segment_json(client, data, output="cutout")
    mask = np.asarray(decode_png(base64.b64decode(body["mask_png"])))
    cutout = np.asarray(decode_png(base64.b64decode(body["output_png"])))
    assert np.array_equal(cutout[:, :, 3], mask)
    assert np.array_equal(cutout[:, :, :3], IMAGE)


@pytest.mark.parametrize("encoding", ["0/255", "0/1", "trimap"])
def test_segment_dice_is_one_for_its_own_mask(client: TestClient, encoding: str) -> None:
    data = png_bytes(IMAGE)
    mask = np.asarray(decode_png(base64.b64decode(segment_json(client, data)["mask_png"]))) > 0
    truth = {"0/255": mask.astype(np.uint8) * 255, "0/1": mask.astype(np.uint8),
             "trimap": np.where(mask, 1, 2).astype(np.uint8)}[encoding]
    files = {**upload(data, "pet.png", "image/png"), "ground_truth": ("gt.png", png_bytes(truth), "image/png")}
    response = client.post("/segment", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["dice"] == pytest.approx(1.0)


def test_segment_dice_header_with_ground_truth(client: TestClient) -> None:
    data = png_bytes(IMAGE)
    empty = np.zeros((72, 96), np.uint8)
    files = {**upload(data, "pet.png", "image/png"), "ground_truth": ("gt.png", png_bytes(empty), "image/png")}
    response = client.post("/segment", files=files, data={"threshold": "0"}, headers={"Accept": "image/png"})
    assert float(response.headers["x-dice"]) == pytest.approx(0.0)


def test_segment_threshold_extremes(client: TestClient) -> None:
    data = jpeg_bytes(IMAGE)
    assert segment_json(client, data, threshold="0")["foreground_fraction"] > 0.99
    assert segment_json(client, data, threshold="1")["foreground_fraction"] == 0.0


def test_segment_applies_exif_orientation(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the upright image is 72 wide, 96 high
    body = segment_json(client, jpeg_bytes(IMAGE, exif=exif.tobytes()))
    assert (body["width"], body["height"]) == (72, 96)


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _palette_with_transparency() -> bytes:
    image = Image.fromarray(IMAGE).convert("P")
    return _encode(image, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.fromarray(IMAGE), Image.fromarray(255 - IMAGE)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("make", [
    lambda: _encode(Image.fromarray(IMAGE).convert("1"), "PNG"),
    lambda: _encode(Image.fromarray(IMAGE).convert("L"), "JPEG"),
    lambda: _encode(Image.fromarray(IMAGE).convert("LA"), "PNG"),
    _palette_with_transparency,
    lambda: _encode(Image.fromarray((IMAGE[:, :, 0].astype(np.uint16) * 200)).convert("I;16"), "PNG"),
    lambda: _encode(Image.fromarray(IMAGE).convert("RGBA"), "PNG"),
    lambda: _encode(Image.fromarray(IMAGE).convert("CMYK"), "JPEG"),
    lambda: _encode(Image.fromarray(IMAGE), "WEBP"),
    lambda: _encode(Image.fromarray(IMAGE), "BMP"),
    lambda: _encode(Image.fromarray(IMAGE), "TIFF"),
    _animated_gif,
], ids=["1", "L", "LA", "P+transparency", "I;16", "RGBA", "CMYK", "WebP", "BMP", "TIFF", "GIF"])
def test_segment_reads_every_mode_and_format(client: TestClient, make) -> None:
    response = client.post("/segment", files=upload(make(), "pet.jpg", "image/jpeg"))  # names lie; bytes decide
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (96, 72)


# ---- errors -------------------------------------------------------------------------------------------------

def test_segment_empty_file_is_400(client: TestClient) -> None:
    response = client.post("/segment", files=upload(b""))
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


@pytest.mark.parametrize("payload", [b"hello world", b"<html><body>not an image</body></html>"])
def test_segment_non_image_is_415(client: TestClient, payload: bytes) -> None:
    response = client.post("/segment", files=upload(payload, "x.jpg"))
    assert response.status_code == 415
    assert "not an image format" in response.json()["detail"]


@pytest.mark.parametrize("data", [jpeg_bytes(IMAGE)[:300], png_bytes(IMAGE)[:200]], ids=["jpeg", "png"])
def test_segment_truncated_image_is_400(client: TestClient, data: bytes) -> None:
    response = client.post("/segment", files=upload(data))
    assert response.status_code == 400
    assert "truncated or corrupt" in response.json()["detail"] or "could not be read" in response.json()["detail"]


def test_segment_missing_image_field_is_422(client: TestClient) -> None:
    response = client.post("/segment", data={"threshold": "0.5"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image"]


@pytest.mark.parametrize("threshold", ["1.5", "-0.1", "abc"])
def test_segment_bad_threshold_is_422(client: TestClient, threshold: str) -> None:
    response = client.post("/segment", files=upload(jpeg_bytes(IMAGE)), data={"threshold": threshold})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "threshold"]


def test_segment_unknown_output_is_422(client: TestClient) -> None:
    response = client.post("/segment", files=upload(jpeg_bytes(IMAGE)), data={"output": "sketch"})
    assert response.status_code == 422


def test_segment_ground_truth_of_another_size_is_422_with_both_sizes(client: TestClient) -> None:
    files = {**upload(jpeg_bytes(IMAGE)), "ground_truth": ("gt.png", png_bytes(np.zeros((10, 20), np.uint8)),
                                                            "image/png")}
    response = client.post("/segment", files=files)
    assert response.status_code == 422
    assert "20x10" in response.json()["detail"] and "96x72" in response.json()["detail"]


@pytest.mark.parametrize("truth", [
    np.tile(np.arange(96, dtype=np.uint8), (72, 1)) * 2,  # a gradient, not a mask
    IMAGE,  # an RGB photo
], ids=["gradient", "photo"])
def test_segment_ground_truth_that_is_not_a_mask_is_422(client: TestClient, truth: np.ndarray) -> None:
    files = {**upload(jpeg_bytes(IMAGE)), "ground_truth": ("gt.png", png_bytes(truth), "image/png")}
    response = client.post("/segment", files=files)
    assert response.status_code == 422
    assert "not a mask" in response.json()["detail"]


@pytest.fixture
def small_limits_client(tiny_checkpoint: Path):
    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", max_upload_bytes=50_000, max_pixels=1_000_000,
                        _env_file=None)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_segment_body_over_limit_is_413(small_limits_client: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    response = small_limits_client.post("/segment", files=upload(png_bytes(noise), "n.png", "image/png"))
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["detail"]


def test_segment_chunked_body_over_limit_is_413(small_limits_client: TestClient) -> None:
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(20):
            yield b"\0" * 10_000

    response = small_limits_client.post("/segment", content=chunks(),
                                        headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["detail"]


def test_segment_decompression_bomb_is_413_from_the_header(small_limits_client: TestClient) -> None:
    bomb = _encode(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 50_000  # a few KB on the wire...
    response = small_limits_client.post("/segment", files=upload(bomb, "bomb.png", "image/png"))
    assert response.status_code == 413  # ...refused before 400 million pixels are decoded
    assert "20000x20000" in response.json()["detail"]


# ---- operations ---------------------------------------------------------------------------------------------

def test_health_is_ok(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_is_503_before_the_lifespan_and_200_after(settings: Settings) -> None:
    app = create_app(settings)
    cold = TestClient(app)  # not entered: the lifespan has not run
    response = cold.get("/ready")
    assert response.status_code == 503 and response.json()["ready"] is False
    assert cold.post("/segment", files=upload(jpeg_bytes(IMAGE))).status_code == 503
    with TestClient(app) as warm:
        assert warm.get("/ready").json() == {"ready": True, "detail": "model loaded and warm"}


def test_model_reports_the_checkpoint(client: TestClient, tiny_checkpoint: Path) -> None:
    info = client.get("/model").json()
    assert info["arch"] == "resnet34_unet" and info["parameters"] > 1_000_000
    assert info["device"] == "cpu" and info["input_size"] == 64 and info["epoch"] == 1
    assert info["checkpoint_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert info["validation_dice"] == 0.5


def test_docs_and_openapi_document_the_segment_form(client: TestClient) -> None:
    assert "text/html" in client.get("/docs").headers["content-type"]
    spec = client.get("/openapi.json").json()
    form_ref = spec["paths"]["/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = spec["components"]["schemas"][form_ref.split("/")[-1]]["properties"]
    assert {"image", "ground_truth", "threshold", "output"} <= set(form)
    fields = spec["components"]["schemas"]["SegmentResponse"]["properties"]
    assert all(field.get("description") for field in fields.values() if "$ref" not in field)


def test_metrics_count_requests(client: TestClient) -> None:
    def count() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('petseg_http_requests_total{method="POST",route="/segment",status="200"}'):
                return float(line.split()[-1])
        return 0.0

    before = count()
    segment_json(client, jpeg_bytes(IMAGE))
    assert count() == before + 1


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(client.get("/health").headers["x-request-id"]) == 32


# ---- API key and CORS ---------------------------------------------------------------------------------------

@pytest.fixture
def keyed_client(tiny_checkpoint: Path):
    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", api_key="s3cret",
                        cors_origins=["http://good.example"], _env_file=None)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_api_key_is_required_except_for_health_and_the_page(keyed_client: TestClient) -> None:
    refused = keyed_client.post("/segment", files=upload(jpeg_bytes(IMAGE)))
    assert refused.status_code == 401 and "API key" in refused.json()["detail"]
    assert keyed_client.get("/model", headers={"X-API-Key": "wrong"}).status_code == 401
    assert keyed_client.get("/health").status_code == 200
    assert keyed_client.get("/").status_code == 200


def test_api_key_in_header_or_bearer_token(keyed_client: TestClient) -> None:
    assert keyed_client.get("/model", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert keyed_client.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_cors_is_closed_by_default(client: TestClient) -> None:
    response = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_preflight_and_401_carry_headers_for_a_configured_origin(keyed_client: TestClient) -> None:
    preflight = keyed_client.options("/segment", headers={"Origin": "http://good.example",
                                                          "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "x-api-key"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://good.example"
    refused = keyed_client.get("/model", headers={"Origin": "http://good.example"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://good.example"
