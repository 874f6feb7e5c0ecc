"""POST /segment's rendering options through the app: output=alpha, soft cutouts, backgrounds, crops, JPEG
answers; every refusal a 422 (or 4xx) naming the field; the OpenAPI page documenting each field.

The model's forward pass is swapped for one that answers a known map (sure on the blob, sure off it), so the
alpha and crop assertions test the service's rendering, not a random tiny model."""
from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.helpers import app_client, assert_photo_where_visible, image_files, open_png, swap_forward
from tests.factories import blob_image, jpeg_bytes, png_bytes

W, H = 96, 72
IMAGE, TRIMAP = blob_image(W, H, seed=5)
PHOTO = png_bytes(IMAGE)  # lossless: renderings compare pixel for pixel
PET = TRIMAP != 2


def blob_forward(batch: torch.Tensor) -> torch.Tensor:
    """The model's answer: 0.95 on the blob, 0.05 elsewhere, at the model's input size."""
    size = batch.shape[-1]
    small = np.asarray(Image.fromarray(PET.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR))
    prob = torch.from_numpy(small.astype(np.float32) / 255 * 0.9 + 0.05)
    return prob.expand(batch.shape[0], size, size).clone()


@pytest.fixture(scope="module")
def api(tiny_checkpoint: Path) -> Iterator[TestClient]:
    with app_client(tiny_checkpoint) as client:
        swap_forward(client, blob_forward)
        yield client


def post(client: TestClient, query: str = "", *, files: dict | None = None, headers: dict | None = None,
         **form: str):  # noqa: ANN201
    return client.post(f"/segment{query}", files=files or image_files(PHOTO, "pet.png", "image/png"), data=form,
                       headers=headers or {})


def image_of(response) -> Image.Image:  # noqa: ANN001
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


# --- output=alpha and soft cutouts ----------------------------------------------------------------------------

def test_alpha_is_rgba_at_the_photos_size_opaque_on_the_pet_clear_elsewhere(api: TestClient) -> None:
    response = post(api, "?format=png", output="alpha")
    assert response.headers["content-type"] == "image/png"
    image = image_of(response)
    assert image.mode == "RGBA" and image.size == (W, H)
    rgba = np.asarray(image)
    assert_photo_where_visible(rgba, IMAGE)  # the full-size photo, not the model's draft
    alpha = rgba[..., 3]
    assert (alpha[TRIMAP == 1] == 255).mean() > 0.95
    assert (alpha[TRIMAP == 2] == 0).mean() > 0.95
    assert "x-crop" not in response.headers


def test_alpha_in_json_has_the_mask_and_the_rendering(api: TestClient) -> None:
    body = post(api, output="alpha").json()
    assert body["output"] == "alpha" and body["crop"] is None
    assert open_png(base64.b64decode(body["output_png"])).mode == "RGBA"
    assert open_png(base64.b64decode(body["mask_png"])).mode == "L"


def test_soft_cutout_is_the_alpha_and_the_plain_cutout_stays_hard(api: TestClient) -> None:
    alpha = post(api, "?format=png", output="alpha").content
    assert post(api, "?format=png", output="cutout", soft="true").content == alpha
    hard = np.asarray(image_of(post(api, "?format=png", output="cutout")))[..., 3]
    assert set(np.unique(hard).tolist()) <= {0, 255}


def test_the_guided_filter_runs_only_when_asked(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.rendering

    def forbidden(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("guided_upsample ran for a request that did not ask for soft edges")

    monkeypatch.setattr(app.rendering, "guided_upsample", forbidden)
    for output in ("mask", "probability", "overlay", "cutout"):
        assert post(api, output=output).status_code == 200, output
    assert post(api, output="cutout", background="#ffffff", crop="true").status_code == 200
    with pytest.raises(AssertionError, match="did not ask"):
        post(api, output="alpha")


# --- backgrounds and JPEG -------------------------------------------------------------------------------------

def test_background_colour_composites_and_answers_rgb(api: TestClient) -> None:
    rgb = np.asarray(image_of(post(api, "?format=png", output="cutout", background="#00ff00")))
    assert rgb.shape == (H, W, 3)
    assert (rgb[TRIMAP == 2] == (0, 255, 0)).all(axis=-1).mean() > 0.95
    np.testing.assert_array_equal(rgb[TRIMAP == 1], IMAGE[TRIMAP == 1])


def test_background_transparent_is_the_rgba_cutout(api: TestClient) -> None:
    assert (post(api, "?format=png", output="alpha", background="transparent").content
            == post(api, "?format=png", output="alpha").content)


def test_background_image_is_scaled_to_cover_under_the_pet(api: TestClient) -> None:
    blue = np.zeros((30, 20, 3), np.uint8)
    blue[..., 2] = 255
    files = {**image_files(PHOTO, "pet.png", "image/png"), "background_image": ("sea.jpg", jpeg_bytes(blue),
                                                                                "image/jpeg")}
    rgb = np.asarray(image_of(post(api, "?format=png", files=files, output="alpha")))
    assert rgb.shape == (H, W, 3)
    background = rgb[TRIMAP == 2].astype(int)
    assert (background[:, 2] > 240).mean() > 0.95 and (background[:, :2] < 15).all(axis=-1).mean() > 0.95


def test_format_jpeg_answers_a_jpeg_where_there_is_no_transparency(api: TestClient) -> None:
    response = post(api, "?format=jpeg", output="alpha", background="#ffffff")
    assert response.headers["content-type"] == "image/jpeg"
    image = image_of(response)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (W, H)
    assert response.headers["x-image-size"] == f"{W}x{H}"
    for output in ("mask", "probability", "overlay"):
        assert image_of(post(api, "?format=jpeg", output=output)).format == "JPEG", output


def test_accept_image_jpeg_gets_a_jpeg_only_without_transparency(api: TestClient) -> None:
    jpeg = post(api, output="cutout", background="#ffffff", headers={"Accept": "image/jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    transparent = post(api, output="cutout", headers={"Accept": "image/jpeg"})
    assert transparent.headers["content-type"] == "application/json"  # offered JSON or PNG: the default
    assert post(api, output="cutout", headers={"Accept": "image/*"}).headers["content-type"] == "image/png"


# --- crop -----------------------------------------------------------------------------------------------------

def pet_box() -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(TRIMAP != 2)
    return int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1


def test_crop_cuts_the_answer_to_the_pet_and_says_where(api: TestClient) -> None:
    response = post(api, "?format=png", output="alpha", crop="true")
    x, y, width, height = map(int, response.headers["x-crop"].split(","))
    image = image_of(response)
    assert image.size == (width, height) and image.mode == "RGBA"
    left, top, pet_w, pet_h = pet_box()
    assert abs(x - left) <= 3 and abs(y - top) <= 3 and abs(width - pet_w) <= 6 and abs(height - pet_h) <= 6
    assert_photo_where_visible(np.asarray(image), IMAGE[y:y + height, x:x + width])
    assert response.headers["x-image-size"] == f"{W}x{H}"  # the photo's size, as always


def test_crop_in_json_gives_the_box_and_a_cropped_output_png_even_for_the_mask(api: TestClient) -> None:
    body = post(api, output="mask", crop="true").json()
    box = body["crop"]
    assert set(box) == {"x", "y", "width", "height"}
    cropped = open_png(base64.b64decode(body["output_png"]))
    full = np.asarray(open_png(base64.b64decode(body["mask_png"])))
    assert full.shape == (H, W)
    np.testing.assert_array_equal(np.asarray(cropped),
                                  full[box["y"]:box["y"] + box["height"], box["x"]:box["x"] + box["width"]])


def test_crop_margin_in_pixels_and_percent(api: TestClient) -> None:
    def box(**form: str) -> list[int]:
        return list(map(int, post(api, "?format=png", output="cutout", crop="true", **form).headers["x-crop"]
                        .split(",")))

    x, y, width, height = box()
    assert box(crop_margin="4") == [x - 4, y - 4, width + 8, height + 8]
    assert box(crop_margin="4px 2px") == [x - 2, y - 4, width + 4, height + 8]
    wide = box(crop_margin="10%")
    assert wide == [x - round(width * 0.1), y - round(height * 0.1), width + 2 * round(width * 0.1),
                    height + 2 * round(height * 0.1)]
    assert box(crop_margin="100%") == [0, 0, W, H]  # never past the photo's edges


def test_crop_with_background_jpeg(api: TestClient) -> None:
    response = post(api, "?format=jpeg", output="alpha", background="#ffffff", crop="true", crop_margin="5%")
    _, _, width, height = map(int, response.headers["x-crop"].split(","))
    assert image_of(response).size == (width, height)


def test_crop_with_no_pet_is_a_422_that_says_so(api: TestClient) -> None:
    response = post(api, "?format=png", output="cutout", crop="true", threshold="1")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("crop: no pet found in the image (at threshold 1)")
    assert post(api, output="cutout", threshold="1").status_code == 200  # without crop: an empty cutout


# --- refusals: each a 4xx naming the field --------------------------------------------------------------------

@pytest.mark.parametrize(("form", "field"), [
    ({"output": "mask", "soft": "true"}, "soft"),
    ({"output": "alpha", "soft": "false"}, "soft"),
    ({"output": "cutout", "background": "blue"}, "background"),
    ({"output": "cutout", "background": "#12345"}, "background"),
    ({"output": "overlay", "background": "#ffffff"}, "background"),
    ({"output": "mask", "crop_margin": "10"}, "crop_margin"),
    ({"output": "mask", "crop": "true", "crop_margin": "5em"}, "crop_margin"),
    ({"output": "mask", "crop": "true", "crop_margin": "1 2 3"}, "crop_margin"),
    ({"output": "mask", "crop": "true", "crop_margin": "150%"}, "crop_margin"),
], ids=["soft-on-mask", "alpha-not-soft", "colour-name", "short-hex", "background-on-overlay",
        "margin-without-crop", "margin-unit", "three-margins", "margin-over-100%"])
def test_bad_option_is_a_422_naming_the_field(api: TestClient, form: dict[str, str], field: str) -> None:
    response = post(api, **form)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: "), response.json()


@pytest.mark.parametrize(("query", "form", "field"), [
    ("", {"output": "sketch"}, "output"),
    ("", {"soft": "maybe", "output": "cutout"}, "soft"),
    ("", {"crop": "perhaps"}, "crop"),
    ("?format=gif", {}, "format"),
])
def test_unparsable_values_are_a_422_naming_the_field(api: TestClient, query: str, form: dict[str, str],
                                                      field: str) -> None:
    response = post(api, query, **form)
    assert response.status_code == 422, response.text
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]


def test_jpeg_of_a_transparent_cutout_is_a_422_naming_format(api: TestClient) -> None:
    for output in ("cutout", "alpha"):
        response = post(api, "?format=jpeg", output=output)
        assert response.status_code == 422
        assert response.json()["detail"].startswith("format: a JPEG cannot hold the transparent background")


def test_background_image_refusals_name_the_field(api: TestClient) -> None:
    def with_background(data: bytes, **form: str):  # noqa: ANN202
        files = {**image_files(PHOTO, "pet.png", "image/png"), "background_image": ("bg.png", data, "image/png")}
        return post(api, "?format=png", files=files, **form)

    good = png_bytes(np.zeros((8, 8, 3), np.uint8))
    for form, field in [({"output": "mask"}, "background_image"),
                        ({"output": "cutout", "background": "#ffffff"}, "background_image")]:
        response = with_background(good, **form)
        assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}: ")
    response = with_background(b"not an image at all, just text", output="cutout")
    assert response.status_code == 415 and response.json()["detail"].startswith("background_image")
    response = with_background(b"", output="cutout")
    assert response.status_code == 400 and response.json()["detail"] == "background_image is empty"


# --- the OpenAPI page -----------------------------------------------------------------------------------------

def test_openapi_documents_every_rendering_field(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    operation = schema["paths"]["/segment"]["post"]
    body_ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    properties = schema["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]["properties"]
    for name in ("output", "soft", "background", "background_image", "crop", "crop_margin"):
        assert len(properties[name].get("description", "")) > 30, name
    assert "alpha" in properties["output"]["enum"]
    format_param = next(p for p in operation["parameters"] if p["name"] == "format")
    assert "jpeg" in str(format_param["schema"]) and "jpeg" in format_param["description"]
    assert set(operation["responses"]["200"]["content"]) >= {"application/json", "image/png", "image/jpeg"}
    crop = schema["components"]["schemas"]["SegmentResponse"]["properties"]["crop"]
    assert "description" in crop
