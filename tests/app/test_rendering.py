"""app.rendering: which option combinations are refused (422 naming the field), and what each rendering holds."""
from __future__ import annotations

import io
import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

from app.compose import Box, Length, Margin, subject_box
from app.errors import ApiError
from app.imaging import encode_mask_png, encode_png
from app.placement import Placement, parse_roi, place_subject
from app.postprocess import to_full_size
from app.rendering import RenderRequest, render, render_request
from tests.app.helpers import assert_photo_where_visible, open_png
from tests.factories import blob_image

W, H = 64, 48
PHOTO, TRIMAP = blob_image(W, H, seed=11)
# A model-size map that is sure where the blob is and sure it is not elsewhere.
PROB_SMALL = np.asarray(Image.fromarray((TRIMAP != 2).astype(np.uint8) * 255).resize((16, 16)),
                        dtype=np.float32) / 255 * 0.9 + 0.05
PREDICTION = to_full_size(PROB_SMALL, (W, H), 0.5)


def refused(field: str, **options: object) -> str:
    with pytest.raises(ApiError) as info:
        render_request(**options)  # type: ignore[arg-type]
    assert info.value.status_code == 422
    assert info.value.detail.startswith(f"{field}: "), info.value.detail
    return info.value.detail


# --- render_request -------------------------------------------------------------------------------------------

def test_defaults_are_the_plain_mask() -> None:
    request = render_request()
    assert request == RenderRequest() and request.is_default and not request.needs_photo


def test_options_are_parsed() -> None:
    request = render_request("cutout", soft=True, background="#102030", crop=True, crop_margin="10%",
                             encoding="jpeg")
    assert request.soft_alpha and request.needs_photo and not request.transparent and not request.is_default
    assert request.background == (16, 32, 48)
    assert request.crop_margin.top == Length(10, percent=True)
    assert render_request("alpha").soft_alpha and render_request("alpha").transparent
    assert not render_request("cutout").soft_alpha


def test_blank_text_fields_count_as_not_given() -> None:
    assert render_request("mask", background=" ", crop_margin="") == RenderRequest()


def test_every_bad_value_names_its_field() -> None:
    assert refused("output", output="sketch") == "output: 'sketch' is not one of mask, probability, overlay, cutout, alpha"
    assert "not a colour" in refused("background", output="cutout", background="blue")
    assert "not a margin" in refused("crop_margin", crop=True, crop_margin="5em")


@pytest.mark.parametrize("output", ["mask", "probability", "overlay"])
def test_cutout_options_are_refused_for_other_outputs(output: str) -> None:
    assert "applies to output=cutout" in refused("soft", output=output, soft=True)
    assert "applies to output=cutout or alpha" in refused("background", output=output, background="#ffffff")
    assert "applies to output=cutout or alpha" in refused("background_image", output=output,
                                                          background_image=b"a photo")


def test_contradictions_are_refused() -> None:
    assert "always soft" in refused("soft", output="alpha", soft=False)
    assert "not both" in refused("background_image", output="cutout", background="#ffffff",
                                 background_image=b"a photo")
    assert "not both" in refused("background_image", output="cutout", background="transparent",
                                 background_image=b"a photo")
    assert "only with crop=true" in refused("crop_margin", crop_margin="10")


@pytest.mark.parametrize("output", ["cutout", "alpha"])
def test_jpeg_cannot_hold_transparency(output: str) -> None:
    assert refused("format", output=output, encoding="jpeg") == (
        f"format: a JPEG cannot hold the transparent background of output={output}; add background=#RRGGBB "
        "(or a background_image), or ask for format=png")
    assert render_request(output, background="#ffffff", encoding="jpeg").encoding == "jpeg"
    assert render_request(output, background_image=b"a photo", encoding="jpeg").encoding == "jpeg"


# --- render ---------------------------------------------------------------------------------------------------

def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_alpha_is_rgba_at_the_photos_size_opaque_on_the_pet_clear_elsewhere() -> None:
    rendered = render(RenderRequest("alpha"), PREDICTION, PROB_SMALL, PHOTO)
    image = open_png(rendered.data)
    assert rendered.media_type == "image/png" and rendered.box is None
    assert image.mode == "RGBA" and image.size == (W, H)
    rgba = np.asarray(image)
    alpha = rgba[..., 3]
    assert_photo_where_visible(rgba, PHOTO)
    assert (alpha[TRIMAP == 1] == 255).mean() > 0.95
    assert (alpha[TRIMAP == 2] == 0).mean() > 0.95


def test_alpha_is_graded_where_the_photos_edge_is() -> None:
    """A blurred photo has a soft outline: the alpha follows it with intermediate values (the mask cannot)."""
    soft_photo = cv2.GaussianBlur(PHOTO, (0, 0), 2.0)
    alpha = np.asarray(open_png(render(RenderRequest("alpha"), PREDICTION, PROB_SMALL, soft_photo).data))[..., 3]
    graded = (alpha > 0) & (alpha < 255)
    assert graded.any() and (graded & (TRIMAP != 2)).sum() >= 0.5 * graded.sum()


def test_soft_cutout_is_the_alpha_output() -> None:
    alpha = render(RenderRequest("alpha"), PREDICTION, PROB_SMALL, PHOTO)
    soft = render(RenderRequest("cutout", soft=True), PREDICTION, PROB_SMALL, PHOTO)
    hard = render(RenderRequest("cutout"), PREDICTION, PROB_SMALL, PHOTO)
    assert soft.data == alpha.data
    hard_alpha = np.asarray(open_png(hard.data))[..., 3]
    assert set(np.unique(hard_alpha).tolist()) <= {0, 255}
    np.testing.assert_array_equal(hard_alpha, PREDICTION.mask)


def test_background_colour_gives_rgb_and_jpeg_when_asked() -> None:
    request = RenderRequest("cutout", background=(0, 255, 0))
    image = open_png(render(request, PREDICTION, PROB_SMALL, PHOTO).data)
    assert image.mode == "RGB"
    rgb = np.asarray(image)
    assert (rgb[PREDICTION.mask == 0] == (0, 255, 0)).all()
    np.testing.assert_array_equal(rgb[PREDICTION.mask > 0], PHOTO[PREDICTION.mask > 0])
    jpeg = render(RenderRequest("cutout", background=(0, 255, 0), encoding="jpeg"), PREDICTION, PROB_SMALL, PHOTO)
    assert jpeg.media_type == "image/jpeg" and jpeg.data[:3] == b"\xff\xd8\xff"
    assert decode(jpeg.data).size == (W, H) and decode(jpeg.data).mode == "RGB"


def test_background_image_is_scaled_to_cover() -> None:
    background = np.zeros((10, 10, 3), np.uint8)
    background[..., 2] = 255
    rgb = np.asarray(open_png(render(RenderRequest("alpha", background_image=b"decoded apart"), PREDICTION,
                                     PROB_SMALL, PHOTO, background).data))
    assert rgb.shape == (H, W, 3)
    assert (rgb[TRIMAP == 2] == (0, 0, 255)).all(axis=-1).mean() > 0.9


def test_crop_cuts_every_output_to_the_pet() -> None:
    rows, cols = np.nonzero(PREDICTION.mask)
    expected = Box(int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1)
    for output in ("mask", "probability", "overlay", "cutout"):
        rendered = render(RenderRequest(output, crop=True), PREDICTION, PROB_SMALL, PHOTO)
        assert rendered.box == expected, output
        assert decode(rendered.data).size == (expected.width, expected.height), output
    mask = np.asarray(decode(render(RenderRequest("mask", crop=True), PREDICTION, PROB_SMALL, PHOTO).data))
    np.testing.assert_array_equal(mask, PREDICTION.mask[expected.slices()])
    wider = render(RenderRequest("mask", crop=True, crop_margin=Margin(*(Length(2, False),) * 4)),
                   PREDICTION, PROB_SMALL, PHOTO)
    assert wider.box == Box(expected.x - 2, expected.y - 2, expected.width + 4, expected.height + 4)


def test_crop_of_the_soft_alpha_keeps_every_visible_pixel() -> None:
    rendered = render(RenderRequest("alpha", crop=True), PREDICTION, PROB_SMALL, PHOTO)
    full = np.asarray(open_png(render(RenderRequest("alpha"), PREDICTION, PROB_SMALL, PHOTO).data))[..., 3]
    assert rendered.box is not None
    assert np.count_nonzero(full) == np.count_nonzero(np.asarray(open_png(rendered.data))[..., 3])


def test_crop_of_an_empty_mask_is_a_422() -> None:
    nothing = to_full_size(np.zeros((16, 16), np.float32), (W, H), 0.5)
    with pytest.raises(ApiError) as info:
        render(RenderRequest("mask", crop=True), nothing, np.zeros((16, 16), np.float32), None, threshold=0.5)
    assert info.value.status_code == 422
    assert info.value.detail.startswith("crop: no pet found in the image (at threshold 0.5)")
    with pytest.raises(ApiError, match=r"\(at threshold 0.5\), so there is nothing to crop to; lower the threshold or leave crop out$"):
        render(RenderRequest("mask", crop=True), nothing, np.zeros((16, 16), np.float32), None)  # the default
    with pytest.raises(ApiError) as info:  # the soft alpha ignores the threshold: the message says so
        render(RenderRequest("alpha", crop=True), nothing, np.zeros((16, 16), np.float32), PHOTO)
    assert info.value.detail == ("crop: no pet found in the image (anywhere in the soft alpha), so there is nothing "
                                 "to crop to; leave crop out")
    assert (info.value.status_code, info.value.code) == (422, "unknown_foreground")  # remove.bg's code


# --- each output, exactly -------------------------------------------------------------------------------------

RAMP = np.linspace(0.0, 1.0, W * H, dtype=np.float32).reshape(H, W)  # at the photo's size: no resize
RAMP_PREDICTION = to_full_size(RAMP, (W, H), 0.5)
RAMP_MASK = RAMP_PREDICTION.mask > 0


def test_mask_is_L_0_255() -> None:
    image = open_png(render(RenderRequest("mask"), RAMP_PREDICTION, RAMP, None).data)
    assert image.mode == "L" and image.size == (W, H)
    np.testing.assert_array_equal(np.asarray(image), np.where(RAMP > 0.5, 255, 0))


def test_probability_is_rounded_8_bit() -> None:
    image = open_png(render(RenderRequest("probability"), RAMP_PREDICTION, RAMP, None).data)
    assert image.mode == "L" and image.size == (W, H)
    values = np.asarray(image)
    np.testing.assert_array_equal(values, np.floor(RAMP * 255.0 + 0.5).astype(np.uint8))
    assert (values[0, 0], values[-1, -1]) == (0, 255)


def test_overlay_tints_only_the_mask() -> None:
    image = open_png(render(RenderRequest("overlay"), RAMP_PREDICTION, RAMP, PHOTO).data)
    assert image.mode == "RGB" and image.size == (W, H)
    overlay = np.asarray(image)
    np.testing.assert_array_equal(overlay[~RAMP_MASK], PHOTO[~RAMP_MASK])
    tinted = np.round(PHOTO[RAMP_MASK] * 0.55 + np.array([255, 64, 64]) * 0.45)
    assert np.abs(overlay[RAMP_MASK].astype(int) - tinted).max() <= 1  # float32 rounding at .5


def test_cutout_is_rgba_with_the_mask_as_alpha() -> None:
    cutout = np.asarray(open_png(render(RenderRequest("cutout"), RAMP_PREDICTION, RAMP, PHOTO).data))
    assert cutout.shape == (H, W, 4)
    np.testing.assert_array_equal(cutout[:, :, 3], np.where(RAMP_MASK, 255, 0))
    assert_photo_where_visible(cutout, PHOTO)


def test_unknown_output_and_a_photo_of_another_size_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="unknown output 'sketch'"):
        RenderRequest("sketch")
    with pytest.raises(ValueError) as info:
        render(RenderRequest("overlay"), RAMP_PREDICTION, RAMP, PHOTO[:10])
    assert str(info.value) == "the photo is 64x10 but the mask 64x48: renderings need the full-size photo"


# --- the matte (remove.bg's channels=alpha) -------------------------------------------------------------------

def test_a_hard_edged_matte_is_the_mask_and_needs_no_photo() -> None:
    request = RenderRequest("cutout", matte=True)
    assert not request.needs_photo and not request.transparent
    rendered = render(request, RAMP_PREDICTION, RAMP, None)
    image = open_png(rendered.data)
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), np.where(RAMP_MASK, 255, 0))


def test_a_soft_matte_is_the_alpha_of_output_alpha() -> None:
    request = RenderRequest("alpha", matte=True)
    assert request.needs_photo
    matte = np.asarray(open_png(render(request, PREDICTION, PROB_SMALL, PHOTO).data))
    rgba = np.asarray(open_png(render(RenderRequest("alpha"), PREDICTION, PROB_SMALL, PHOTO).data))
    np.testing.assert_array_equal(matte, rgba[..., 3])
    jpeg = render(request.as_jpeg(), PREDICTION, PROB_SMALL, PHOTO)  # no transparency: a JPEG can carry it
    assert jpeg.media_type == "image/jpeg"


@pytest.mark.parametrize("kwargs", [{"output": "mask"}, {"output": "overlay"},
                                    {"output": "cutout", "background": (0, 0, 0)},
                                    {"output": "alpha", "background_image": b"png"}])
def test_a_matte_is_only_of_a_transparent_cutout(kwargs: dict) -> None:
    with pytest.raises(ValueError) as info:
        RenderRequest(matte=True, **kwargs)
    assert str(info.value) == "a matte is the alpha of output=cutout or alpha, with no background"


# --- remove.bg's paths: roi, placement, the ZIP answer ----------------------------------------------------------

def zip_members(data: bytes) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        return {name: np.asarray(Image.open(io.BytesIO(archive.read(name)))) for name in archive.namelist()}


def test_the_roi_clears_the_soft_alpha_outside_it() -> None:
    """The photo is wider than high: a region given in percent must use each axis's own extent."""
    request = RenderRequest("alpha", roi=parse_roi("25% 50% 75% 100%"))
    assert request.roi_box(W, H) == Box(16, 24, 32, 24)
    alpha = np.asarray(open_png(render(request, PREDICTION, PROB_SMALL, PHOTO).data))[..., 3]
    whole = np.asarray(open_png(render(RenderRequest("alpha"), PREDICTION, PROB_SMALL, PHOTO).data))[..., 3]
    inside = np.zeros((H, W), bool)
    inside[24:48, 16:48] = True
    np.testing.assert_array_equal(alpha[inside], whole[inside])
    assert not alpha[~inside].any() and whole[~inside].any()


def test_a_whole_photo_roi_is_no_roi_and_one_past_the_edge_is_remove_bgs_400() -> None:
    assert RenderRequest("mask", roi=parse_roi("0% 0% 100% 100%")).roi_box(W, H) is None
    assert RenderRequest("mask").roi_box(W, H) is None
    with pytest.raises(ApiError) as info:
        RenderRequest("mask", roi=parse_roi("0px 0px 10px 60px")).roi_box(W, H)
    assert (info.value.status_code, info.value.code) == (400, "roi_exceeds_bounds")
    assert info.value.detail == "roi: the region 0,0 to 10,60 reaches past the 64x48 photo"


def test_a_placement_moves_the_cutout_and_reports_the_subjects_box() -> None:
    placement = Placement(scale=0.5, position=(0.0, 1.0))
    rendered = render(RenderRequest("cutout", placement=placement), PREDICTION, PROB_SMALL, PHOTO)
    rgba = np.asarray(open_png(rendered.data))
    moved_rgb, moved_alpha = place_subject(PHOTO, PREDICTION.mask, placement)
    np.testing.assert_array_equal(rgba[..., 3], moved_alpha)
    np.testing.assert_array_equal(rgba[..., :3][moved_alpha > 0], moved_rgb[moved_alpha > 0])
    assert rendered.subject == subject_box(moved_alpha) and rendered.subject.x == 0
    assert rendered.subject.y + rendered.subject.height == H  # bottom left, as position 0% 100% says


def test_a_placement_leaves_a_mask_where_it_is_and_no_pet_has_an_empty_box() -> None:
    placement = Placement(scale=0.5, position=(0.0, 0.0))
    mask = render(RenderRequest("mask", crop=False, encoding="jpeg", placement=placement),
                  PREDICTION, PROB_SMALL, PHOTO)
    plain = render(RenderRequest("mask", encoding="jpeg"), PREDICTION, PROB_SMALL, PHOTO)
    assert mask.data == plain.data and plain.subject is None
    assert mask.subject == subject_box(PREDICTION.mask, level=127)  # where the pet is, not where it would go
    nothing = to_full_size(np.zeros((16, 16), np.float32), (W, H), 0.5)
    empty = render(RenderRequest("cutout", placement=placement), nothing, np.zeros((16, 16), np.float32), PHOTO)
    assert empty.subject == Box(0, 0, 0, 0)


def test_the_subject_box_is_where_the_soft_alpha_is_at_least_half_opaque(monkeypatch: pytest.MonkeyPatch) -> None:
    alpha = np.zeros((H, W), np.uint8)
    alpha[10:20, 10:20] = 255
    alpha[10, 30] = 128  # half opaque: part of the subject
    alpha[40, 10] = 127  # just under: not
    monkeypatch.setattr("app.rendering.guided_upsample", lambda *args, **kwargs: alpha.copy())
    rendered = render(RenderRequest("alpha", placement=Placement()), PREDICTION, PROB_SMALL, PHOTO)
    np.testing.assert_array_equal(np.asarray(open_png(rendered.data))[..., 3], alpha)  # nothing moves
    assert rendered.subject == Box(10, 10, 21, 10)


def test_the_zip_holds_the_photos_colours_and_the_cutouts_alpha() -> None:
    rendered = render(RenderRequest("cutout", encoding="zip"), PREDICTION, PROB_SMALL, PHOTO)
    assert rendered.media_type == "application/zip" and rendered.box is None and rendered.subject is None
    members = zip_members(rendered.data)
    assert sorted(members) == ["alpha.png", "color.jpg"]
    np.testing.assert_array_equal(members["alpha.png"], PREDICTION.mask)
    colour = members["color.jpg"].astype(int)
    assert colour.shape == (H, W, 3)
    visible = PREDICTION.mask > 0
    assert np.abs(colour[visible] - PHOTO[visible]).mean() < 12  # JPEG quality 90


def test_a_zip_over_a_colour_is_opaque_and_a_matte_zip_holds_the_photo() -> None:
    over_red = render(RenderRequest("cutout", background=(255, 0, 0), encoding="zip"),
                      PREDICTION, PROB_SMALL, PHOTO)
    members = zip_members(over_red.data)
    assert (members["alpha.png"] == 255).all()
    background = PREDICTION.mask == 0
    assert np.abs(members["color.jpg"][background].astype(int) - (255, 0, 0)).mean() < 12
    matte = zip_members(render(RenderRequest("cutout", matte=True, encoding="zip"),
                               PREDICTION, PROB_SMALL, PHOTO).data)
    np.testing.assert_array_equal(matte["alpha.png"], PREDICTION.mask)
    assert np.abs(matte["color.jpg"].astype(int) - PHOTO).mean() < 12  # the whole photo, not the cutout


def test_a_zip_over_a_see_through_colour_keeps_the_colours_opacity() -> None:
    members = zip_members(render(RenderRequest("cutout", background=(255, 0, 0, 128), encoding="zip"),
                                 PREDICTION, PROB_SMALL, PHOTO).data)
    background = PREDICTION.mask == 0
    assert (members["alpha.png"][background] == 128).all() and (members["alpha.png"][~background] == 255).all()


def test_a_cropped_zip_says_its_box() -> None:
    rendered = render(RenderRequest("cutout", crop=True, encoding="zip", placement=Placement()),
                      PREDICTION, PROB_SMALL, PHOTO)
    assert rendered.box == subject_box(PREDICTION.mask)
    assert rendered.subject == Box(0, 0, rendered.box.width, rendered.box.height)
    assert zip_members(rendered.data)["alpha.png"].shape == (rendered.box.height, rendered.box.width)


def test_hard_edged_answers_use_the_mask_encoder_and_soft_ones_the_picture_encoder() -> None:
    np.testing.assert_equal(render(RenderRequest("mask", crop=True), PREDICTION, PROB_SMALL, None).data,
                            encode_mask_png(PREDICTION.mask[subject_box(PREDICTION.mask).slices()]))
    assert render(RenderRequest("cutout", matte=True), PREDICTION, PROB_SMALL, None).data == \
        encode_mask_png(PREDICTION.mask)
    soft = render(RenderRequest("alpha", matte=True), PREDICTION, PROB_SMALL, PHOTO)
    assert soft.data == encode_png(np.asarray(open_png(soft.data)))
