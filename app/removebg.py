"""remove.bg's request fields, checked and turned into petseg's rendering options (``app.rendering``).

remove.bg (``POST https://api.remove.bg/v1.0/removebg``) is what many background-removal clients and plugins
speak. This module maps its documented fields onto what petseg does, refuses with a clear message the ones it
does not do (rather than silently returning something else), and accepts their default values so clients that
always send them keep working. No HTTP here: errors are :class:`ApiError` 400s, as remove.bg answers them.

Supported: ``size`` (a cap on the answer's pixel count), ``type`` (accepted, ignored: the model finds pets),
``type_level`` (ignored), ``format`` (auto, png, jpg), ``channels`` (rgba, alpha), ``bg_color``, a background
image (``bg_image_file`` / ``bg_image_url``), ``crop``, ``crop_margin``, ``semitransparency`` (false: hard
edges). Refused unless at their defaults: ``roi``, ``scale``, ``position``, ``add_shadow``, ``shadow_type``,
``shadow_opacity``; refused always: ``format=zip`` and ``webp``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from PIL import ImageColor

from app.compose import Colour, parse_colour
from app.errors import ApiError
from app.rendering import RenderRequest, render_request

__all__ = ["DEFAULTS", "FIELDS", "RemoveBgOptions", "max_pixels_for", "parse_options"]

# Pixel caps of remove.bg's sizes (its preview is 0.25 megapixels, e.g. 625x400); None: the photo's own size.
SIZE_CAPS: dict[str, int | None] = {"preview": 250_000, "small": 250_000, "regular": 250_000,
                                    "medium": 1_500_000, "hd": 4_000_000,
                                    "full": None, "4k": None, "50mp": None, "auto": None}
TYPES = frozenset({"auto", "person", "product", "car", "animal", "graphic", "transportation"})
TYPE_LEVELS = frozenset({"none", "1", "2", "latest"})
# Fields this service does not implement, with the values that mean "not used" (remove.bg's defaults).
NOT_IMPLEMENTED: dict[str, frozenset[str]] = {
    "roi": frozenset({"0% 0% 100% 100%"}),
    "scale": frozenset({"original"}),
    "position": frozenset({"original"}),
    "add_shadow": frozenset({"false", "0"}),
    "shadow_type": frozenset(),
    "shadow_opacity": frozenset(),
}
DEFAULTS: dict[str, str] = {"size": "auto", "type": "auto", "format": "auto", "channels": "rgba",
                            "crop": "false", "semitransparency": "true"}
FIELDS = frozenset({"image_file_b64", "image_url", "bg_color", "bg_image_url", "crop_margin", "type_level",
                    "model", *DEFAULTS, *NOT_IMPLEMENTED})
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


@dataclass(frozen=True)
class RemoveBgOptions:
    render: RenderRequest  # what the service draws
    channels: str  # rgba: the cutout; alpha: only its alpha matte, grey
    encoding: str  # png or jpeg, the answer's format
    max_pixels: int | None  # the answer's pixel cap (size); None: the photo's size


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULTS.get(name, "")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _flag(fields: Mapping[str, Any], name: str) -> bool:
    value = _text(fields, name).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError(400, f"{name}: expected true or false, got {value!r}")


def _choice(fields: Mapping[str, Any], name: str, allowed: frozenset[str] | set[str]) -> str:
    value = _text(fields, name).lower()
    if value not in allowed:
        raise ApiError(400, f"{name}: {value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def _colour(text: str) -> Colour:
    """remove.bg's bg_color: hex (``81d4fa``, ``#fff``) or a colour name (``green``); no transparency."""
    try:
        colour = parse_colour(text)
    except ValueError:
        try:
            rgba = ImageColor.getrgb(text if not text.isalnum() or text.isalpha() else "#" + text)
        except ValueError:
            raise ApiError(400, f"bg_color: {text!r} is not a colour: give hex (81d4fa, #fff) or a name "
                                f"(green)") from None
        if len(rgba) == 4 and rgba[3] != 255:
            raise ApiError(400, "bg_color: a semi-transparent background colour is not supported") from None
        colour = (rgba[0], rgba[1], rgba[2])
    if colour is None:  # "transparent": the default anyway
        raise ApiError(400, "bg_color: leave it out for a transparent background")
    return colour


def _refuse_unimplemented(fields: Mapping[str, Any]) -> None:
    for name, defaults in NOT_IMPLEMENTED.items():
        value = fields.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        shown = _text(fields, name).lower()
        if shown not in defaults:
            raise ApiError(400, f"{name}: not supported by this service (only remove.bg's default is "
                                f"accepted)")


def max_pixels_for(size: str) -> int | None:
    return SIZE_CAPS[size]


def parse_options(fields: Mapping[str, Any], *, background_image: bytes | None) -> RemoveBgOptions:
    """Check remove.bg's fields (strings from a form, or JSON values) and build the rendering; a 400 naming
    the field for anything this service does not do."""
    unknown = sorted(name for name in fields if name not in FIELDS and fields[name] is not None)
    if unknown:
        raise ApiError(400, f"{unknown[0]}: not a parameter of this endpoint")
    _refuse_unimplemented(fields)
    size = _choice(fields, "size", set(SIZE_CAPS))
    _choice(fields, "type", TYPES)
    if fields.get("type_level") not in (None, ""):
        _choice(fields, "type_level", TYPE_LEVELS)
    requested = _text(fields, "format").lower()
    if requested in ("zip", "webp"):
        raise ApiError(400, f"format: {requested} is not supported by this service; ask for png or jpg")
    fmt = _choice(fields, "format", {"auto", "png", "jpg", "jpeg"})
    channels = _choice(fields, "channels", {"rgba", "alpha"})
    crop = _flag(fields, "crop")
    soft = _flag(fields, "semitransparency")
    colour_text = _text(fields, "bg_color")
    colour = _colour(colour_text) if colour_text else None
    if colour is not None and background_image is not None:
        raise ApiError(400, "bg_color: give bg_color or a background image, not both")
    if channels == "alpha":  # the matte alone: backgrounds do not apply (as with remove.bg, they are ignored)
        colour, background_image = None, None
    has_background = colour is not None or background_image is not None
    encoding = "jpeg" if fmt in ("jpg", "jpeg") or (fmt == "auto" and has_background) else "png"
    if encoding == "jpeg" and channels == "rgba" and not has_background:
        colour = (255, 255, 255)  # a JPEG has no transparency: remove.bg answers the cutout on white
    try:
        # Soft edges: the guided-filter alpha (output=alpha); semitransparency=false: the thresholded mask.
        render = render_request("alpha" if soft else "cutout", soft=None if soft else False,
                                background=None if colour is None else "#{:02x}{:02x}{:02x}".format(*colour),
                                background_image=background_image, crop=crop,
                                crop_margin=_text(fields, "crop_margin") or None)
    except ApiError as exc:
        raise ApiError(400, exc.detail) from None
    if channels == "alpha":
        render = replace(render, matte=True)  # the grey alpha alone, drawn and encoded by the service
    if encoding == "jpeg":
        render = render.as_jpeg()
    return RemoveBgOptions(render, channels, encoding, max_pixels_for(size))
