"""POST /v1.0/removebg: remove.bg's fields, answers, headers and error envelope on petseg's model.

The model's forward pass is replaced by a fixed probability map (a pet in a known rectangle), so the headers,
crops and composites can be checked against where the pet is.
"""
from __future__ import annotations

import base64
import io
import time
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


def refused(response, status: int, code: str, *words: str) -> str:  # noqa: ANN001
    """remove.bg's envelope: one error with a title, ``code`` and a detail holding ``words``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errors"} and len(body["errors"]) == 1, body
    error = body["errors"][0]
    assert set(error) == {"title", "code", "detail"} and error["title"], error
    assert error["code"] == code, error
    for word in words:
        assert word in error["detail"], error["detail"]
    return error["detail"]


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


def test_the_alpha_has_soft_edges_and_semitransparency_concerns_car_windows_only(api: TestClient) -> None:
    soft = removebg(api)
    assert len(np.unique(np.asarray(ok(soft).getchannel("A")))) > 2  # graded along the outline
    assert removebg(api, semitransparency="false").content == soft.content  # remove.bg: car windows only


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


def test_defaults_and_values_harmless_to_pets_are_accepted(api: TestClient) -> None:
    plain = removebg(api).content
    response = removebg(api, roi="0% 0% 100% 100%", scale="original", position="original", add_shadow="false",
                        type="product", type_level="latest", semitransparency="true", size="auto")
    assert response.content == plain
    for form in ({"add_shadow": "true"}, {"shadow_type": "drop", "shadow_opacity": "50"},
                 {"shadow_method": "latest"}, {"crop_margin": "10%"},  # no crop: remove.bg ignores the margin
                 {"roi": "0px 0px 120px 90px"}):
        assert removebg(api, **form).content == plain, form


def test_type_level_none_leaves_out_x_type(api: TestClient) -> None:
    assert "x-type" not in removebg(api, type_level="none").headers
    assert removebg(api, type_level="2").headers["x-type"] == "animal"


def test_the_default_size_follows_the_setting(tiny_checkpoint: Path) -> None:
    big = jpeg_bytes(blob_image(800, 600, seed=1)[0])
    with app_client(tiny_checkpoint, removebg_default_size="preview") as client:
        swap_forward(client, pet_forward)
        assert ok(client.post(PATH, files=upload(big))).size == (577, 433)  # remove.bg's own default
        assert ok(client.post(PATH, files=upload(big), data={"size": "full"})).size == (800, 600)


# --- roi, scale, position, see-through colours, zip --------------------------------------------------------

def test_roi_keeps_the_pet_inside_the_region_only(api: TestClient) -> None:
    whole = np.asarray(ok(removebg(api)).getchannel("A"))
    response = removebg(api, roi="0% 0% 50% 100%")  # the left half: the pet's left half stays
    alpha = np.asarray(ok(response).getchannel("A"))
    assert alpha.shape == whole.shape and not alpha[:, 60:].any()
    np.testing.assert_array_equal(alpha[:, :60], whole[:, :60])
    left, _, width, _ = header_box(response)
    assert left + width <= 60 and abs(left - 30) <= 2
    in_pixels = np.asarray(ok(removebg(api, roi="0px 0px 60px 90px")).getchannel("A"))
    np.testing.assert_array_equal(in_pixels, alpha)


def test_a_roi_without_the_pet_is_unknown_foreground(api: TestClient) -> None:
    refused(removebg(api, roi="0% 0% 20% 20%"), 400, "unknown_foreground", "no pet found", "inside roi")


@pytest.mark.parametrize(("roi", "code"), [("0% 0% 120% 100%", "roi_exceeds_bounds"),
                                           ("0px 0px 121px 90px", "roi_exceeds_bounds"),
                                           ("50% 0% 50% 100%", "roi_region_empty"),
                                           ("0% 0% 100%", "invalid_roi"), ("a b c d", "invalid_roi")])
def test_a_roi_that_does_not_fit_is_refused_with_remove_bgs_code(api: TestClient, roi: str, code: str) -> None:
    refused(removebg(api, roi=roi), 400, code, "roi")


def test_scale_and_position_place_the_pet_on_the_canvas(api: TestClient) -> None:
    # scale 100%: the pet's 60x45 box fitted to the 120x90 canvas, centred
    big = removebg(api, scale="100%")
    alpha = np.asarray(ok(big).getchannel("A"))
    rows, cols = np.nonzero(alpha)  # every visible pixel of the pet, its soft fringe too, fills one axis
    assert (rows.min(), rows.max()) == (0, 89) or (cols.min(), cols.max()) == (0, 119)
    assert abs((cols.min() + cols.max()) / 2 - 59.5) <= 1 and abs((rows.min() + rows.max()) / 2 - 44.5) <= 1
    left, top, width, height = header_box(big)
    assert width >= 100 and height >= 75
    # scale 50% at the top left corner
    corner = np.asarray(ok(removebg(api, scale="50%", position="0%")).getchannel("A"))
    rows, cols = np.nonzero(corner)
    assert (rows.min(), cols.min()) == (0, 0) and (cols.max() + 1 <= 60 and rows.max() + 1 <= 45)
    assert cols.max() + 1 == 60 or rows.max() + 1 == 45  # half the canvas on the axis that binds
    # position alone moves the pet without resizing it: to the bottom right
    moved = removebg(api, position="100% 100%")
    plain = header_box(removebg(api))
    left, top, width, height = header_box(moved)
    assert abs(width - plain[2]) <= 2 and abs(height - plain[3]) <= 2  # the half-opaque box: the mask's
    assert 117 <= left + width <= 120 and 87 <= top + height <= 90
    alpha = np.asarray(ok(moved).getchannel("A"))
    assert alpha[-1].any() and alpha[:, -1].any() and not alpha[:30, :50].any()


@pytest.mark.parametrize(("form", "code"), [({"scale": "5%"}, "invalid_scale"), ({"scale": "big"}, "invalid_scale"),
                                            ({"position": "left"}, "invalid_position"),
                                            ({"position": "10% 20% 30%"}, "invalid_position")])
def test_bad_scale_or_position_is_refused(api: TestClient, form: dict, code: str) -> None:
    refused(removebg(api, **form), 400, code)


def test_a_see_through_bg_color_gives_an_rgba_answer(api: TestClient) -> None:
    response = removebg(api, bg_color="81d4fa80")
    image = ok(response)
    assert image.mode == "RGBA" and response.headers["content-type"] == "image/png"
    corner, pet = np.asarray(image)[3, 3], np.asarray(image)[45, 60]
    assert tuple(corner) == (0x81, 0xD4, 0xFA, 0x80) and pet[3] == 255
    assert tuple(np.asarray(ok(removebg(api, bg_color="#f0f8")))[3, 3]) == (255, 0, 255, 0x88)
    refused(removebg(api, bg_color="81d4fa80", format="jpg"), 400, "invalid_format", "see-through")


def test_format_zip_holds_remove_bgs_color_jpg_and_alpha_png(api: TestClient) -> None:
    import zipfile

    cutout = ok(removebg(api, format="png"))
    response = removebg(api, format="zip")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
        colour = Image.open(io.BytesIO(archive.read("color.jpg")))
        alpha = Image.open(io.BytesIO(archive.read("alpha.png")))
        assert colour.format == "JPEG" and colour.mode == "RGB" and alpha.mode == "L"
        assert colour.size == alpha.size == (120, 90)
        np.testing.assert_array_equal(np.asarray(alpha), np.asarray(cutout.getchannel("A")))
        pet = np.asarray(colour).astype(int)[45, 60]
        assert np.abs(pet - np.asarray(cutout).astype(int)[45, 60, :3]).max() <= 6  # JPEG
    with zipfile.ZipFile(io.BytesIO(removebg(api, format="zip", crop="true").content)) as archive:
        assert Image.open(io.BytesIO(archive.read("alpha.png"))).size == ok(removebg(api, crop="true")).size


# --- refusals in remove.bg's envelope -----------------------------------------------------------------------

@pytest.mark.parametrize(("form", "code", "words"), [
    ({"format": "webp"}, "invalid_format", ["format", "webp"]),
    ({"format": "gif"}, "invalid_format", ["format", "'gif'"]),
    ({"size": "huge"}, "invalid_size", ["size", "'huge'"]),
    ({"type": "plant"}, "invalid_type", ["type", "'plant'"]),
    ({"type_level": "3"}, "invalid_type_level", ["type_level"]),
    ({"channels": "rgb"}, "invalid_channels", ["channels"]),
    ({"crop": "maybe"}, "invalid_crop", ["crop", "true or false"]),
    ({"semitransparency": "maybe"}, "invalid_semitransparency", ["semitransparency"]),
    ({"add_shadow": "maybe"}, "invalid_add_shadow", ["add_shadow"]),
    ({"shadow_opacity": "150"}, "invalid_shadow_opacity", ["shadow_opacity"]),
    ({"crop": "true", "crop_margin": "ten"}, "invalid_crop_margin", ["crop_margin"]),
    ({"crop": "true", "crop_margin": "60%"}, "invalid_crop_margin", ["50%", "500px"]),
    ({"crop": "true", "crop_margin": "10px 501px"}, "invalid_crop_margin", ["500px"]),
    ({"bg_color": "notacolour"}, "invalid_bg_color", ["bg_color", "not a colour"]),
    ({"model": "nope"}, "invalid_parameters", ["unknown model 'nope'", "default"]),
])
def test_bad_fields_are_400s_with_remove_bgs_code(api: TestClient, form: dict, code: str, words: list) -> None:
    refused(removebg(api, **form), 400, code, *words)


@pytest.mark.parametrize(("files", "form", "code", "words"), [
    ({}, {"size": "auto"}, "missing_source", ["no image given"]),
    (None, {"image_file_b64": base64.b64encode(PHOTO).decode()}, "multiple_sources",
     ["one image source", "image_file_b64"]),
    ({}, {"image_file_b64": "not base64!"}, "failed_to_read_image", ["image_file_b64", "base64"]),
    ({"image_file": ("x.jpg", b"not an image", "image/jpeg")}, {}, "invalid_file_type", ["not an image format"]),
    ({"image_file": ("x.jpg", PHOTO[:200], "image/jpeg")}, {}, "failed_to_read_image", ["image"]),
    ({**upload(), "bg_image_file": ("b.png", png_bytes(np.zeros((4, 4, 3), np.uint8)), "image/png")},
     {"bg_color": "red"}, "multiple_bg_sources", ["bg_color"]),
])
def test_bad_image_sources_are_400s(api: TestClient, files: dict | None, form: dict, code: str,
                                    words: list) -> None:
    refused(removebg(api, files, **form), 400, code, *words)


@pytest.mark.parametrize(("payload", "words"), [
    ({"image_file": "abc"}, ["multipart"]),
    (["image_file_b64"], ["JSON body must be an object"]),
])
def test_bad_json_bodies_are_400s(api: TestClient, payload: object, words: list) -> None:
    refused(api.post(PATH, json=payload), 400, "invalid_json", *words)


def test_unknown_fields_are_ignored_in_json_as_in_a_form(api: TestClient) -> None:
    b64 = base64.b64encode(PHOTO).decode()
    expected = api.post(PATH, json={"image_file_b64": b64}).content
    assert api.post(PATH, json={"image_file_b64": b64, "colour": "red"}).content == expected
    assert api.post(PATH, data={"image_file_b64": b64, "colour": "red"}).content == expected


def test_body_that_does_not_parse_as_json_is_a_400(api: TestClient) -> None:
    response = api.post(PATH, content=b"{not json", headers={"Content-Type": "application/json"})
    refused(response, 400, "invalid_json", "does not parse")


def test_a_photo_without_a_pet_is_unknown_foreground(api: TestClient) -> None:
    swap_forward(api, no_pet_forward)
    try:
        for form in ({}, {"crop": "true"}, {"format": "zip"}, {"channels": "alpha"}):
            refused(removebg(api, **form), 400, "unknown_foreground", "no pet found")
    finally:
        swap_forward(api, pet_forward)


def test_body_over_the_limit_is_file_too_large(api: TestClient) -> None:
    refused(api.post(PATH, files=upload(b"\xff" * 2_100_000)), 400, "file_too_large", "larger than the limit")


def test_a_photo_over_the_pixel_limit_is_resolution_too_high(tiny_checkpoint: Path) -> None:
    """Above the medium cap (1.5 MP) and the pixel limit: remove.bg's code, not /segment's 413."""
    photo = jpeg_bytes(np.full((1200, 1600, 3), 90, np.uint8))  # 1.92 MP
    with app_client(tiny_checkpoint, max_pixels=1_600_000) as client:
        refused(client.post(PATH, files=upload(photo), data={"size": "medium"}), 400, "resolution_too_high",
                "1600x1200")
        assert client.post("/segment", files={"image": ("p.jpg", photo, "image/jpeg")}).status_code == 413


def test_a_medium_or_hd_size_shrinks_a_photo_over_its_cap(api: TestClient) -> None:
    photo = jpeg_bytes(blob_image(2000, 1500, seed=2)[0])  # 3 MP: over medium's 1.5, under hd's 4
    medium = removebg(api, upload(photo), size="medium")
    width, height = ok(medium).size
    assert width * height <= 1_500_000 and abs(width / height - 4 / 3) < 0.01 and width >= 1410
    assert ok(removebg(api, upload(photo), size="hd")).size == (2000, 1500)


def test_image_url_is_off_by_default(api: TestClient) -> None:
    refused(api.post(PATH, data={"image_url": "http://127.0.0.1:9/cat.jpg"}), 400, "failed_image_download",
            "image_url", "PETSEG_ALLOW_URLS")
    refused(api.post(PATH, files=upload(), data={"bg_image_url": "http://127.0.0.1:9/b.jpg"}), 400,
            "failed_bg_download", "bg_image_url", "PETSEG_ALLOW_URLS")


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
            refused(client.post(PATH, data={"image_url": server.base.replace("127.0.0.1", "localhost")}), 400,
                    "failed_image_download", "loopback")
            refused(client.post(PATH, files=upload(), data={"bg_image_url": server.base + "/missing.jpg"}), 400,
                    "failed_bg_download", "bg_image_url")
        assert transport.hosts and all(host == "127.0.0.1" for host in transport.hosts)
    finally:
        server.close()


def test_api_key_is_x_api_key_and_a_refusal_is_403_in_the_envelope(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint, api_key="s3cret") as keyed:
        refused(keyed.post(PATH, files=upload()), 403, "auth_failed", "API key")
        refused(keyed.post(PATH, files=upload(), headers={"X-Api-Key": "wrong"}), 403, "auth_failed", "API key")
        refused(keyed.get("/v1.0/account"), 403, "auth_failed")
        assert keyed.get("/v1.0/account", headers={"X-Api-Key": "s3cret"}).status_code == 200
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


# --- the account, the rate limit, paths that do not exist ---------------------------------------------------

def test_account_answers_remove_bgs_shape_from_the_setting(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint, removebg_credits=250) as client:
        body = client.get("/v1.0/account").json()
    attributes = body["data"]["attributes"]
    assert attributes["credits"] == {"total": 250.0, "subscription": 250.0, "payg": 0.0, "enterprise": 0.0}
    assert attributes["api"] == {"free_calls": 250, "sizes": "all"}


def test_an_unknown_path_under_v1_is_a_404_in_the_envelope(api: TestClient) -> None:
    response = api.get("/v1.0/improve")
    assert response.status_code == 404 and response.json()["errors"][0]["code"] == "not_found"
    assert api.get("/nope").json() == {"detail": "Not Found"}  # the rest of the API keeps FastAPI's shape


def test_a_full_queue_is_remove_bgs_rate_limit(api: TestClient) -> None:
    from app.errors import ApiError
    from app.routes.removebg import removebg_error

    before = int(time.time())
    status, body, headers = removebg_error(
        ApiError(503, "the service is at capacity", {"Retry-After": "3"}, reason="queue_full"), max_queue=64)
    assert status == 429 and body["errors"][0]["code"] == "rate_limit_exceeded"
    assert headers["Retry-After"] == "3" and headers["X-RateLimit-Limit"] == "64"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert before + 3 <= int(headers["X-RateLimit-Reset"]) <= int(time.time()) + 3
    status, body, _ = removebg_error(ApiError(503, "the model did not answer", reason="timeout"), max_queue=64)
    assert status == 503 and body["errors"][0]["code"] == "service_unavailable"


def test_a_field_that_fails_validation_is_remove_bgs_400_naming_it(api: TestClient) -> None:
    answer = api.post("/v1.0/removebg", data={"image_file": "not a file"})
    assert answer.status_code == 400
    (error,) = answer.json()["errors"]
    assert error["code"] == "invalid_parameters" and error["detail"].startswith("image_file: ")
    assert error["title"] == "Invalid parameters"  # not "Invalid parameters parameter given"
