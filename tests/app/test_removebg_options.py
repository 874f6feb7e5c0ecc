"""remove.bg's request fields turned into petseg's rendering, without HTTP: every field, its default, its refusal
with remove.bg's error code, and how the fields combine (format auto, channels alpha, backgrounds)."""
from __future__ import annotations

import pytest

from app.compose import parse_margin
from app.placement import Placement, parse_roi
from app.removebg import RemoveBgError, parse_bg_color, parse_options
from app.rendering import RenderRequest

WHOLE_PHOTO = parse_roi("0% 0% 100% 100%")


def options(background_image: bytes | None = None, **fields: object):  # noqa: ANN201 - RemoveBgOptions
    return parse_options(fields, background_image=background_image)


def refusal(code: str, background_image: bytes | None = None, **fields: object) -> str:
    with pytest.raises(RemoveBgError) as info:
        parse_options(fields, background_image=background_image)
    assert (info.value.status_code, info.value.code) == (400, code), info.value.detail
    return info.value.detail


def test_no_fields_is_the_soft_cutout_as_a_png_at_the_photos_size() -> None:
    chosen = options()
    assert chosen.render == RenderRequest("alpha", roi=WHOLE_PHOTO)
    assert (chosen.channels, chosen.encoding, chosen.max_pixels, chosen.type_header) == ("rgba", "png", None, True)


@pytest.mark.parametrize(("size", "cap"), [("preview", 250_000), ("small", 250_000), ("regular", 250_000),
                                           ("medium", 1_500_000), ("hd", 4_000_000), ("full", None), ("4k", None),
                                           ("50mp", None), ("auto", None), ("HD", 4_000_000)])
def test_each_size_caps_the_answers_pixels(size: str, cap: int | None) -> None:
    assert options(size=size).max_pixels == cap


def test_the_default_size_applies_only_when_none_is_sent() -> None:
    assert parse_options({}, background_image=None, default_size="preview").max_pixels == 250_000
    assert parse_options({"size": " "}, background_image=None, default_size="medium").max_pixels == 1_500_000
    assert parse_options({"size": "hd"}, background_image=None, default_size="preview").max_pixels == 4_000_000
    detail = refusal("invalid_size", size="huge")
    assert detail == "size: 'huge' is not one of 4k, 50mp, auto, full, hd, medium, preview, regular, small"


def test_type_level_none_drops_the_type_header() -> None:
    assert options(type_level="none").type_header is False
    assert options(type_level="latest").type_header is True and options(type_level="2").type_header is True
    assert refusal("invalid_type_level", type_level="3") == "type_level: '3' is not one of 1, 2, latest, none"


@pytest.mark.parametrize(("fields", "encoding", "colour"), [
    ({}, "png", None),
    ({"format": "png", "bg_color": "red"}, "png", (255, 0, 0)),
    ({"format": "auto", "bg_color": "red"}, "jpeg", (255, 0, 0)),  # opaque: the smaller JPEG
    ({"format": "auto", "bg_color": "ff000080"}, "png", (255, 0, 0, 128)),  # see-through: a PNG
    ({"format": "JPG"}, "jpeg", (255, 255, 255)),  # no transparency in a JPEG: on white, as remove.bg
    ({"format": "jpeg", "bg_color": "00f"}, "jpeg", (0, 0, 255)),
    ({"format": "zip"}, "zip", None),
    ({"format": "zip", "bg_color": "red"}, "zip", (255, 0, 0)),
])
def test_the_format_follows_remove_bgs_rules(fields: dict, encoding: str, colour: tuple | None) -> None:
    chosen = options(**fields)
    assert chosen.encoding == chosen.render.encoding == encoding
    assert chosen.render.background == colour


def test_format_auto_over_a_background_image_is_a_jpeg() -> None:
    chosen = options(background_image=b"photo", format="auto")
    assert chosen.encoding == "jpeg" and chosen.render.background_image == b"photo"
    assert chosen.render.background is None


def test_formats_that_cannot_be_are_refused() -> None:
    assert refusal("invalid_format", format="webp") == (
        "format: webp is not supported by this service; ask for auto, png, jpg or zip")
    assert refusal("invalid_format", format="jpg", bg_color="ff000080") == (
        "format: a JPEG cannot hold a see-through bg_color; ask for png, zip or auto")
    assert refusal("invalid_format", format="gif") == "format: 'gif' is not one of auto, jpeg, jpg, png, zip"


def test_channels_alpha_is_the_grey_matte_and_backgrounds_do_not_apply() -> None:
    chosen = options(background_image=b"photo", channels="alpha", format="jpg")
    assert chosen.channels == "alpha" and chosen.render.matte
    assert chosen.render.background is None and chosen.render.background_image is None
    assert chosen.encoding == "jpeg" and chosen.render.background is None  # a grey JPEG needs no white
    assert options(channels="alpha", bg_color="red").render.background is None
    assert refusal("invalid_channels", channels="rgb") == "channels: 'rgb' is not one of alpha, rgba"


def test_crop_and_its_margin_within_remove_bgs_caps() -> None:
    assert options(crop="true", crop_margin="50%").render.crop_margin == parse_margin("50%")
    assert options(crop="yes", crop_margin="500px 10px").render.crop
    assert options(crop_margin="900px").render == RenderRequest("alpha", roi=WHOLE_PHOTO)  # ignored without crop
    assert options(crop="false", crop_margin="nonsense").render.crop is False
    for margin in ("51%", "501px", "0 0 0 501px"):
        assert refusal("invalid_crop_margin", crop="1", crop_margin=margin) == (
            f"crop_margin: {margin!r} is over remove.bg's cap of 50% or 500px a side")
    assert refusal("invalid_crop_margin", crop="true", crop_margin="wide").startswith("crop_margin: ")


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("YES", True), (True, True),
                                                 ("false", False), ("0", False), ("no", False), (False, False),
                                                 (1, True), (0, False), ("", False), (None, False)])
def test_flags_take_remove_bgs_spellings_and_json_values(value: object, expected: bool) -> None:
    assert options(crop=value).render.crop is expected


def test_a_flag_that_is_neither_is_refused_by_its_name() -> None:
    assert refusal("invalid_crop", crop="maybe") == "crop: expected true or false, got 'maybe'"


def test_roi_scale_and_position_place_the_pet() -> None:
    chosen = options(roi="10px 20px 50% 100%", scale="50%", position="0% 100%")
    assert chosen.render.roi == parse_roi("10px 20px 50% 100%")
    assert chosen.render.placement == Placement(0.5, (0.0, 1.0))
    assert options(scale="80%").render.placement == Placement(0.8, (0.5, 0.5))  # centred when no position
    assert options(position="center").render.placement == Placement(None, (0.5, 0.5))
    assert options().render.placement is None
    assert refusal("invalid_roi", roi="1 2 3").startswith("roi: ")
    assert refusal("invalid_scale", scale="5%").startswith("scale: '5%': give original or a percentage")
    assert refusal("invalid_position", position="left").startswith("position: 'left': give original, center")
    assert refusal("invalid_scale", scale="5%", position="left").startswith("scale: ")  # scale is checked first


@pytest.mark.parametrize(("text", "colour"), [("fff", (255, 255, 255)), ("#81d4fa", (0x81, 0xD4, 0xFA)),
                                              ("81D4FA77", (0x81, 0xD4, 0xFA, 0x77)), ("81d4faff", (0x81, 0xD4, 0xFA)),
                                              ("f0f8", (255, 0, 255, 0x88)), ("#abc", (0xAA, 0xBB, 0xCC)),
                                              ("green", (0, 128, 0)), ("#ff0000", (255, 0, 0)),
                                              ("rgba(255,0,0,128)", (255, 0, 0, 128)),
                                              ("rgba(255,0,0,255)", (255, 0, 0))])
def test_bg_color_is_hex_of_3_4_6_or_8_digits_or_a_name(text: str, colour: tuple) -> None:
    assert parse_bg_color(text) == colour


@pytest.mark.parametrize("text", ["12345", "ggg", "#12", "nocolour", "1234567", "XXX"])
def test_a_bg_color_that_is_no_colour_is_refused(text: str) -> None:
    with pytest.raises(RemoveBgError) as info:
        parse_bg_color(text)
    assert info.value.code == "invalid_bg_color"
    assert info.value.detail == (f"bg_color: {text!r} is not a colour: give hex (81d4fa, fff, 81d4fa77) or a "
                                 "name (green)")


def test_one_background_source_at_a_time() -> None:
    message = "bg_color: give one background source: bg_color, bg_image_url or bg_image_file"
    assert refusal("multiple_bg_sources", background_image=b"photo", bg_color="red") == message
    with pytest.raises(RemoveBgError) as info:
        parse_options({"bg_color": "red"}, background_image=None, has_background_source=True)
    assert info.value.code == "multiple_bg_sources"
    assert parse_options({}, background_image=None, has_background_source=True).render.background is None


def test_fields_that_cannot_apply_to_pets_are_still_checked() -> None:
    options(type="person", add_shadow="true", semitransparency="false", shadow_type="drop", shadow_method="latest",
            shadow_opacity="100")
    options(shadow_opacity="0", shadow_type=" ", shadow_method="")
    assert refusal("invalid_type", type="dog") == (
        "type: 'dog' is not one of animal, auto, car, graphic, person, product, transportation")
    assert refusal("invalid_add_shadow", add_shadow="maybe").startswith("add_shadow: ")
    assert refusal("invalid_semitransparency", semitransparency="2").startswith("semitransparency: ")
    assert refusal("invalid_shadow_type", shadow_type="soft").startswith("shadow_type: ")
    assert refusal("invalid_shadow_method", shadow_method="new").startswith("shadow_method: ")
    for opacity in ("101", "-1", "half"):
        assert refusal("invalid_shadow_opacity", shadow_opacity=opacity) == (
            f"shadow_opacity: expected 0 to 100, got {opacity!r}")
