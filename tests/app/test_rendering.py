"""app.rendering: which option combinations are refused (422 naming the field), and what each rendering holds."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from app.compose import Box, Length
from app.errors import ApiError
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
    assert "not one of" in refused("output", output="sketch")
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
    assert "cannot hold the transparent" in refused("format", output=output, encoding="jpeg")
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
    with pytest.raises(ApiError) as info:  # the soft alpha ignores the threshold: the message says so
        render(RenderRequest("alpha", crop=True), nothing, np.zeros((16, 16), np.float32), PHOTO)
    assert info.value.detail.startswith("crop: no pet found in the image (anywhere in the soft alpha)")


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
    with pytest.raises(ValueError, match="need the full-size photo"):
        render(RenderRequest("overlay"), RAMP_PREDICTION, RAMP, PHOTO[:10])


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
    with pytest.raises(ValueError, match="matte"):
        RenderRequest(matte=True, **kwargs)
