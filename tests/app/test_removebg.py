"""POST /v1.0/removebg: remove.bg's fields, answers, headers and error envelope on petseg's model.

The model's forward pass is replaced by a fixed probability map (a pet in a known rectangle), so the headers,
crops and composites can be checked against where the pet is.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.helpers import app_client, swap_forward
from tests.app.test_image_url import LoopbackOnly, PhotoServer
from tests.factories import blob_image, jpeg_bytes, png_bytes

PATH = "/v1.0/removebg"
PHOTO = jpeg_bytes(blob_image(120, 90, seed=3)[0])
# The pet, in fractions of the photo: rows 1/4..3/4, columns 1/4..3/4 (at 120x90: x 30..90, y 22..67).
PET = (0.25, 0.75)


def pet_forward(batch: torch.Tensor) -> torch.Tensor:
    size = batch.shape[-1]
    prob = torch.zeros(batch.shape[0], size, size)
    lo, hi = round(size * PET[0]), round(size * PET[1])
    prob[:, lo:hi, lo:hi] = 1.0
    return prob


def no_pet_forward(batch: torch.Tensor) -> torch.Tensor:
    return torch.zeros(batch.shape[0], batch.shape[-1], batch.shape[-1])


@pytest.fixture(scope="module")
def api(tiny_checkpoint: Path) -> Iterator[TestClient]:
    with app_client(tiny_checkpoint, max_upload_bytes=2_000_000) as client:
        real = swap_forward(client, pet_forward)
        yield client
        swap_forward(client, real)


def upload(photo: bytes = PHOTO) -> dict:
    return {"image_file": ("pet.jpg", photo, "image/jpeg")}


def removebg(client: TestClient, files: dict | None = None, **form: str):  # noqa: ANN201
    return client.post(PATH, files=upload() if files is None else files, data=form)


def ok(response) -> Image.Image:  # noqa: ANN001
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def refused(response, status: int, *words: str) -> str:  # noqa: ANN001
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errors"} and len(body["errors"]) == 1, body
    title = body["errors"][0]["title"]
    for word in words:
        assert word in title, title
    return title


def header_box(response) -> tuple[int, int, int, int]:  # noqa: ANN001
    h = response.headers
    return (int(h["x-foreground-left"]), int(h["x-foreground-top"]), int(h["x-foreground-width"]),
            int(h["x-foreground-height"]))


# --- the default answer -------------------------------------------------------------------------------------

def test_default_answer_is_an_rgba_cutout_with_remove_bg_headers(api: TestClient) -> None:
    response = removebg(api)
    image = ok(response)
    assert response.headers["content-type"] == "image/png"
    assert image.mode == "RGBA" and image.size == (120, 90)
    assert (response.headers["x-width"], response.headers["x-height"]) == ("120", "90")
    assert response.headers["x-type"] == "animal" and response.headers["x-credits-charged"] == "0"
    assert response.headers["x-model-name"] == "default"
    left, top, width, height = header_box(response)
    assert abs(left - 30) <= 2 and abs(top - 22) <= 2 and abs(width - 60) <= 3 and abs(height - 45) <= 3
    alpha = np.asarray(image.getchannel("A"))
    assert alpha[45, 60] == 255 and alpha[5, 5] == 0 and alpha[85, 115] == 0
    rgb = np.asarray(image.convert("RGB")).astype(int)
    photo = np.asarray(Image.open(io.BytesIO(PHOTO)).convert("RGB")).astype(int)
    assert np.abs(rgb[45, 60] - photo[45, 60]).max() <= 2  # the pet's own pixels


def test_default_alpha_has_soft_edges_and_semitransparency_false_is_hard(api: TestClient) -> None:
    soft = np.asarray(ok(removebg(api)).getchannel("A"))
    hard = np.asarray(ok(removebg(api, semitransparency="false")).getchannel("A"))
    assert len(np.unique(soft)) > 2  # graded along the outline
    assert set(np.unique(hard).tolist()) <= {0, 255}


def test_the_photo_as_base64_or_json_gives_the_same_answer(api: TestClient) -> None:
    expected = removebg(api).content
    b64 = base64.b64encode(PHOTO).decode()
    assert api.post(PATH, data={"image_file_b64": b64}).content == expected
    assert api.post(PATH, json={"image_file_b64": b64}).content == expected
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))  # as base64 tools print it
    assert api.post(PATH, data={"image_file_b64": wrapped}).content == expected


def test_the_foreground_box_is_the_masks_bounding_box(api: TestClient) -> None:
    mask = np.asarray(ok(api.post("/segment?format=png", files={"image": ("pet.jpg", PHOTO, "image/jpeg")})))
    rows, cols = np.nonzero(mask)
    assert rows.size  # the pet_forward model finds a pet
    expected = (int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1)
    assert header_box(removebg(api)) == expected


def test_json_answer_when_preferred(api: TestClient) -> None:
    image = removebg(api).content
    response = api.post(PATH, files=upload(), headers={"Accept": "application/json"})
    assert response.status_code == 200
    data = response.json()["data"]
    assert base64.b64decode(data["result_b64"]) == image
    assert (data["foreground_left"], data["foreground_top"], data["foreground_width"],
            data["foreground_height"]) == header_box(response)


# --- size, format, backgrounds, crop, channels --------------------------------------------------------------

@pytest.mark.parametrize(("size", "expected"), [("preview", (577, 433)), ("small", (577, 433)),
                                                ("medium", (800, 600)), ("full", (800, 600)),
                                                ("auto", (800, 600))])
def test_size_caps_the_answer_keeping_the_aspect(api: TestClient, size: str,
                                                 expected: tuple[int, int]) -> None:
    big = jpeg_bytes(blob_image(800, 600, seed=1)[0])
    response = removebg(api, upload(big), size=size)
    assert ok(response).size == expected
    assert (int(response.headers["x-width"]), int(response.headers["x-height"])) == expected
    left, top, width, _ = header_box(response)
    assert abs(left - expected[0] // 4) <= 3 and abs(width - expected[0] // 2) <= 4


def test_a_capped_answer_is_drawn_on_the_shrunk_photo(api: TestClient) -> None:
    big = jpeg_bytes(blob_image(800, 600, seed=1)[0])
    cutout = np.asarray(ok(removebg(api, upload(big), size="preview")))
    with Image.open(io.BytesIO(big)) as photo:
        shrunk = cv2.resize(np.asarray(photo.convert("RGB")), (577, 433), interpolation=cv2.INTER_AREA)
    visible = cutout[..., 3] > 0
    assert visible.any()
    np.testing.assert_array_equal(cutout[..., :3][visible], shrunk[visible])


@pytest.mark.parametrize(("form", "mode", "media"), [
    ({"format": "jpg"}, "RGB", "image/jpeg"),
    ({"format": "auto", "bg_color": "81d4fa"}, "RGB", "image/jpeg"),
    ({"format": "png", "bg_color": "#81d4fa"}, "RGB", "image/png"),
    ({"format": "auto"}, "RGBA", "image/png"),
])
def test_format_follows_remove_bg(api: TestClient, form: dict, mode: str, media: str) -> None:
    response = removebg(api, **form)
    assert ok(response).mode == mode and response.headers["content-type"] == media


@pytest.mark.parametrize(("form", "corner"), [
    ({"format": "jpg"}, (255, 255, 255)),  # a JPEG without a colour: the cutout on white
    ({"bg_color": "81d4fa", "format": "png"}, (0x81, 0xD4, 0xFA)),
    ({"bg_color": "green", "format": "png"}, (0, 128, 0)),
    ({"bg_color": "#f0f", "format": "png"}, (255, 0, 255)),
])
def test_background_colour(api: TestClient, form: dict, corner: tuple[int, int, int]) -> None:
    rgb = np.asarray(ok(removebg(api, **form)).convert("RGB")).astype(int)
    assert np.abs(rgb[3, 3] - np.array(corner)).max() <= 3  # JPEG rounding


def test_background_image(api: TestClient) -> None:
    backdrop = png_bytes(np.full((40, 50, 3), (10, 200, 30), dtype=np.uint8))
    files = {**upload(), "bg_image_file": ("beach.png", backdrop, "image/png")}
    image = ok(api.post(PATH, files=files, data={"format": "png"}))
    assert image.mode == "RGB" and image.size == (120, 90)
    assert tuple(np.asarray(image)[3, 3]) == (10, 200, 30)


def test_crop_to_the_pet_with_and_without_margin(api: TestClient) -> None:
    tight = removebg(api, crop="true")
    width, height = ok(tight).size
    # cut where the soft alpha ends: the pet's 60x45 box and the few pixels its graded outline adds
    assert 60 <= width <= 72 and 45 <= height <= 57
    assert (tight.headers["x-width"], tight.headers["x-height"]) == (str(width), str(height))
    left, top, fg_width, fg_height = header_box(tight)
    assert (fg_width, fg_height) == header_box(removebg(api))[2:]  # the same pet, now in the crop's pixels
    assert 0 <= left <= width - fg_width and 0 <= top <= height - fg_height
    margin = removebg(api, crop="true", crop_margin="10px")
    assert ok(margin).size == (width + 20, height + 20)
    assert abs(header_box(margin)[0] - (left + 10)) <= 1


def test_channels_alpha_is_the_grey_matte_of_the_cutout(api: TestClient) -> None:
    cutout = ok(removebg(api))
    matte = ok(removebg(api, channels="alpha", bg_color="green"))  # backgrounds do not apply to the matte
    assert matte.mode == "L" and matte.size == cutout.size
    assert np.array_equal(np.asarray(matte), np.asarray(cutout.getchannel("A")))
    as_jpeg = removebg(api, channels="alpha", format="jpg")
    assert ok(as_jpeg).mode == "L" and as_jpeg.headers["content-type"] == "image/jpeg"


def test_hard_edged_matte_is_the_cutouts_alpha_and_a_mask(api: TestClient) -> None:
    cutout = ok(removebg(api, semitransparency="false"))
    matte = ok(removebg(api, channels="alpha", semitransparency="false", crop="true"))
    box = header_box(removebg(api, semitransparency="false"))
    alpha = np.asarray(cutout.getchannel("A"))
    assert matte.mode == "L" and set(np.unique(np.asarray(matte)).tolist()) <= {0, 255}
    assert matte.size == (box[2], box[3])  # cropped to the pet, as the cutout would be
    np.testing.assert_array_equal(np.asarray(matte), alpha[box[1]:box[1] + box[3], box[0]:box[0] + box[2]])


def test_defaults_of_unsupported_fields_are_accepted(api: TestClient) -> None:
    response = removebg(api, roi="0% 0% 100% 100%", scale="original", position="original", add_shadow="false",
                        type="product", type_level="latest", semitransparency="true", size="auto")
    assert response.content == removebg(api).content


# --- refusals in remove.bg's envelope -----------------------------------------------------------------------

@pytest.mark.parametrize(("form", "words"), [
    ({"scale": "50%"}, ["scale", "not supported"]),
    ({"position": "center"}, ["position", "not supported"]),
    ({"roi": "10% 10% 90% 90%"}, ["roi", "not supported"]),
    ({"add_shadow": "true"}, ["add_shadow", "not supported"]),
    ({"shadow_type": "car"}, ["shadow_type", "not supported"]),
    ({"format": "zip"}, ["format", "zip is not supported"]),
    ({"format": "webp"}, ["format", "webp"]),
    ({"format": "gif"}, ["format", "'gif'"]),
    ({"size": "huge"}, ["size", "'huge'"]),
    ({"type": "plant"}, ["type", "'plant'"]),
    ({"channels": "rgb"}, ["channels"]),
    ({"crop": "maybe"}, ["crop", "true or false"]),
    ({"crop_margin": "10%"}, ["crop_margin", "crop=true"]),
    ({"crop": "true", "crop_margin": "ten"}, ["crop_margin"]),
    ({"bg_color": "notacolour"}, ["bg_color", "not a colour"]),
    ({"bg_color": "81d4fa77"}, ["bg_color", "semi-transparent"]),
    ({"model": "nope"}, ["unknown model 'nope'", "default"]),
])
def test_unsupported_or_bad_fields_are_400s_naming_the_field(api: TestClient, form: dict,
                                                             words: list) -> None:
    refused(removebg(api, **form), 400, *words)


@pytest.mark.parametrize(("files", "form", "words"), [
    ({}, {"size": "auto"}, ["no image given"]),
    (None, {"image_file_b64": base64.b64encode(PHOTO).decode()}, ["one image source", "image_file_b64"]),
    ({}, {"image_file_b64": "not base64!"}, ["image_file_b64", "base64"]),
    ({"image_file": ("x.jpg", b"not an image", "image/jpeg")}, {}, ["not an image format"]),
    ({"image_file": ("x.jpg", PHOTO[:200], "image/jpeg")}, {}, ["image", "ead"]),  # "cannot be read"...
])
def test_bad_image_sources_are_400s(api: TestClient, files: dict | None, form: dict, words: list) -> None:
    refused(removebg(api, files, **form), 400, *words)


@pytest.mark.parametrize(("payload", "words"), [
    ({"image_file_b64": base64.b64encode(PHOTO).decode(), "colour": "red"}, ["colour", "not a parameter"]),
    ({"image_file": "abc"}, ["multipart"]),
    (["image_file_b64"], ["JSON body must be an object"]),
])
def test_bad_json_bodies_are_400s(api: TestClient, payload: object, words: list) -> None:
    refused(api.post(PATH, json=payload), 400, *words)


def test_body_that_does_not_parse_as_json_is_a_400(api: TestClient) -> None:
    response = api.post(PATH, content=b"{not json", headers={"Content-Type": "application/json"})
    refused(response, 400, "does not parse")


def test_crop_without_a_pet_is_a_400(api: TestClient) -> None:
    swap_forward(api, no_pet_forward)
    try:
        refused(removebg(api, crop="true"), 400, "no pet found")
        response = removebg(api)  # without crop: an empty cutout, and an empty foreground box
        assert ok(response).getchannel("A").getextrema() == (0, 0)
        assert header_box(response) == (0, 0, 0, 0)
    finally:
        swap_forward(api, pet_forward)


def test_body_over_the_limit_is_413_in_the_envelope(api: TestClient) -> None:
    refused(api.post(PATH, files=upload(b"\xff" * 2_100_000)), 413, "larger than the limit")


def test_image_url_is_off_by_default(api: TestClient) -> None:
    refused(api.post(PATH, data={"image_url": "http://127.0.0.1:9/cat.jpg"}), 403, "PETSEG_ALLOW_URLS")
    refused(api.post(PATH, files=upload(), data={"bg_image_url": "http://127.0.0.1:9/b.jpg"}), 403,
            "PETSEG_ALLOW_URLS")


def test_image_url_and_bg_image_url_fetch_through_the_checked_fetcher(tiny_checkpoint: Path) -> None:
    server, transport = PhotoServer(), LoopbackOnly()
    try:
        with app_client(tiny_checkpoint, allow_urls=True, url_allow_hosts=["127.0.0.1"]) as client:
            client.app.state.url_fetcher.transport = transport
            swap_forward(client, pet_forward)
            by_url = client.post(PATH, data={"image_url": server.base + "/cat.jpg", "format": "png"})
            assert ok(by_url).size == (80, 60)  # test_image_url's photo
            backdrop = client.post(PATH, files=upload(), data={"bg_image_url": server.base + "/cat.jpg"})
            assert ok(backdrop).mode == "RGB" and backdrop.headers["content-type"] == "image/jpeg"
            refused(client.post(PATH, data={"image_url": server.base.replace("127.0.0.1", "localhost")}), 403,
                    "loopback")
        assert transport.hosts and all(host == "127.0.0.1" for host in transport.hosts)
    finally:
        server.close()


def test_api_key_is_x_api_key_and_a_refusal_is_403_in_the_envelope(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint, api_key="s3cret") as keyed:
        refused(keyed.post(PATH, files=upload()), 403, "API key")
        refused(keyed.post(PATH, files=upload(), headers={"X-Api-Key": "wrong"}), 403, "API key")
        assert keyed.post(PATH, files=upload(), headers={"X-Api-Key": "s3cret"}).status_code == 200
        other = keyed.post("/segment", files={"image": ("p.jpg", PHOTO, "image/jpeg")})
        assert other.status_code == 401 and "detail" in other.json()  # the rest of the API is unchanged


def test_openapi_documents_every_field(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    operation = spec["paths"][PATH]["post"]
    ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert {"image_file", "image_file_b64", "image_url", "size", "type", "format", "bg_color",
            "bg_image_file", "crop", "crop_margin", "channels"} <= set(body["properties"])
    assert all(prop.get("description") for prop in body["properties"].values())
    assert any(p["name"] == "X-Api-Key" for p in operation["parameters"])
