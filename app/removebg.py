"""remove.bg's request fields, checked and turned into petseg's rendering options (``app.rendering``).

remove.bg (``POST https://api.remove.bg/v1.0/removebg``, its swagger 1.0.0) is what many background-removal
clients and plugins speak. Every field of its spec is taken with remove.bg's meaning, or accepted and ignored
where it cannot apply to pets, and a value remove.bg would refuse is refused with remove.bg's error code. No HTTP
here: errors are :class:`RemoveBgError` 400s.

With remove.bg's meaning: ``size`` (a cap on the answer's pixel count), ``format`` (auto, png, jpg, zip: a
``color.jpg`` and an ``alpha.png``), ``channels`` (rgba, alpha), ``bg_color`` (hex of 3, 4, 6 or 8 digits, the
4 and 8 see-through, or a colour name), a background image (``bg_image_file`` / ``bg_image_url``), ``crop``,
``crop_margin`` (at most 50% of the subject or 500 px a side; ignored without ``crop``), ``roi`` (nothing outside
it is the pet), ``scale`` and ``position`` (the pet placed on the canvas), ``type_level`` (``none``: no
``X-Type``). Accepted and ignored: ``type`` (the model finds pets), ``add_shadow``, ``shadow_type``,
``shadow_opacity``, ``shadow_method`` (remove.bg draws shadows under cars only), ``semitransparency`` (remove.bg
makes car windows see-through; the pet's soft edges are the cutout's in both cases). Unknown fields are ignored,
in a form as in a JSON body.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from PIL import ImageColor

from app.compose import Colour, TranslucentColour, parse_margin
from app.errors import ApiError
from app.placement import parse_placement, parse_roi
from app.rendering import RenderRequest, render_request

__all__ = ["DEFAULTS", "RemoveBgError", "RemoveBgOptions", "max_pixels_for", "parse_options"]

# Pixel caps of remove.bg's sizes (its preview is 0.25 megapixels, e.g. 625x400); None: the photo's own size.
SIZE_CAPS: dict[str, int | None] = {"preview": 250_000, "small": 250_000, "regular": 250_000,
                                    "medium": 1_500_000, "hd": 4_000_000,
                                    "full": None, "4k": None, "50mp": None, "auto": None}
TYPES = frozenset({"auto", "person", "product", "car", "animal", "graphic", "transportation"})
TYPE_LEVELS = frozenset({"none", "1", "2", "latest"})
SHADOW_TYPES = frozenset({"car", "3d", "drop"})
SHADOW_METHODS = frozenset({"legacy", "latest"})
DEFAULTS: dict[str, str] = {"type": "auto", "type_level": "1", "format": "auto", "channels": "rgba",
                            "crop": "false", "crop_margin": "0", "semitransparency": "true", "add_shadow": "false",
                            "roi": "0% 0% 100% 100%", "scale": "original", "position": "original"}
MAX_MARGIN_PERCENT, MAX_MARGIN_PX = 50.0, 500.0  # remove.bg's caps on crop_margin, per side
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


class RemoveBgError(ApiError):
    """A 400 in remove.bg's words: its error ``code`` and a message that names the field."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(400, detail, code=code)


@dataclass(frozen=True)
class RemoveBgOptions:
    render: RenderRequest  # what the service draws
    channels: str  # rgba: the cutout; alpha: only its alpha matte, grey
    encoding: str  # png, jpeg or zip, the answer's format
    max_pixels: int | None  # the answer's pixel cap (size); None: the photo's size
    type_header: bool  # X-Type in the answer (type_level=none leaves it out)


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
    raise RemoveBgError(f"invalid_{name}", f"{name}: expected true or false, got {value!r}")


def _choice(fields: Mapping[str, Any], name: str, allowed: frozenset[str] | set[str], default: str = "") -> str:
    value = (_text(fields, name) or default).lower()
    if value not in allowed:
        raise RemoveBgError(f"invalid_{name}", f"{name}: {value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def parse_bg_color(text: str) -> Colour | TranslucentColour:
    """remove.bg's bg_color: hex of 3, 4, 6 or 8 digits with or without ``#`` (4 and 8 carry an opacity), or a
    colour name (``green``); a fully opaque colour is RGB."""
    digits = text[1:] if text.startswith("#") else text
    if len(digits) in (3, 4, 6, 8) and all(c in "0123456789abcdefABCDEF" for c in digits):
        if len(digits) in (3, 4):
            digits = "".join(2 * c for c in digits)
        values = tuple(int(digits[i:i + 2], 16) for i in range(0, len(digits), 2))
    else:
        try:
            values = ImageColor.getrgb(text)  # a name, or CSS's rgb()/rgba()/hsl(): rgba's opacity counts too
        except ValueError:
            raise RemoveBgError("invalid_bg_color", f"bg_color: {text!r} is not a colour: give hex (81d4fa, fff, "
                                                    f"81d4fa77) or a name (green)") from None
    return values if len(values) == 4 and values[3] < 255 else values[:3]  # type: ignore[return-value]


def _crop_margin(text: str) -> str:
    """The margin as given, when remove.bg would take it: each side at most 50% of the subject or 500 px."""
    try:
        margin = parse_margin(text)
    except ValueError as exc:
        raise RemoveBgError("invalid_crop_margin", f"crop_margin: {exc}") from None
    for side in (margin.top, margin.right, margin.bottom, margin.left):
        if side.value > (MAX_MARGIN_PERCENT if side.percent else MAX_MARGIN_PX):
            raise RemoveBgError("invalid_crop_margin", f"crop_margin: {text!r} is over remove.bg's cap of "
                                                       f"{MAX_MARGIN_PERCENT:g}% or {MAX_MARGIN_PX:g}px a side")
    return text


def _check_ignored(fields: Mapping[str, Any]) -> None:
    """Fields with no effect on pets are still checked, so a typo is as visible here as at remove.bg."""
    _choice(fields, "type", TYPES)
    _flag(fields, "add_shadow")
    _flag(fields, "semitransparency")
    if _text(fields, "shadow_type"):
        _choice(fields, "shadow_type", SHADOW_TYPES)
    if _text(fields, "shadow_method"):
        _choice(fields, "shadow_method", SHADOW_METHODS)
    opacity = _text(fields, "shadow_opacity")
    if opacity and not (opacity.isdigit() and 0 <= int(opacity) <= 100):
        raise RemoveBgError("invalid_shadow_opacity", f"shadow_opacity: expected 0 to 100, got {opacity!r}")


def max_pixels_for(size: str) -> int | None:
    return SIZE_CAPS[size]


def parse_options(fields: Mapping[str, Any], *, background_image: bytes | None, has_background_source: bool = False,
                  default_size: str = "auto") -> RemoveBgOptions:
    """Check remove.bg's fields (strings from a form, or JSON values) and build the rendering.

    ``background_image``: the decoded-later bytes of ``bg_image_file`` / ``bg_image_url``;
    ``has_background_source``: one of them was given (checked before any download, for multiple_bg_sources).
    ``default_size``: the size when the request sends none (PETSEG_REMOVEBG_DEFAULT_SIZE)."""
    _check_ignored(fields)
    size = _choice(fields, "size", set(SIZE_CAPS), default=default_size)
    type_level = _choice(fields, "type_level", TYPE_LEVELS)
    requested = _text(fields, "format").lower()
    if requested == "webp":
        raise RemoveBgError("invalid_format", "format: webp is not supported by this service; ask for auto, png, "
                                              "jpg or zip")
    fmt = _choice(fields, "format", {"auto", "png", "jpg", "jpeg", "zip"})
    channels = _choice(fields, "channels", {"rgba", "alpha"})
    crop = _flag(fields, "crop")
    margin = _crop_margin(_text(fields, "crop_margin")) if crop else None  # ignored without crop, as remove.bg
    try:
        roi = parse_roi(_text(fields, "roi"))
    except ValueError as exc:
        raise RemoveBgError("invalid_roi", f"roi: {exc}") from None
    try:
        placement = parse_placement(_text(fields, "scale"), "original")
    except ValueError as exc:
        raise RemoveBgError("invalid_scale", f"scale: {exc}") from None
    try:
        placement = parse_placement(_text(fields, "scale"), _text(fields, "position"))
    except ValueError as exc:
        raise RemoveBgError("invalid_position", f"position: {exc}") from None
    colour_text = _text(fields, "bg_color")
    colour = parse_bg_color(colour_text) if colour_text else None
    if colour is not None and (background_image is not None or has_background_source):
        raise RemoveBgError("multiple_bg_sources", "bg_color: give one background source: bg_color, "
                                                   "bg_image_url or bg_image_file")
    if channels == "alpha":  # the matte alone: backgrounds do not apply (as with remove.bg, they are ignored)
        colour, background_image = None, None
    has_background = colour is not None or background_image is not None
    see_through = colour is not None and len(colour) == 4
    if fmt == "zip":
        encoding = "zip"
    elif fmt in ("jpg", "jpeg") or (fmt == "auto" and has_background and not see_through):
        encoding = "jpeg"
    else:
        encoding = "png"
    if encoding == "jpeg" and see_through:
        raise RemoveBgError("invalid_format", "format: a JPEG cannot hold a see-through bg_color; ask for png, "
                                              "zip or auto")
    if encoding == "jpeg" and channels == "rgba" and not has_background:
        colour = (255, 255, 255)  # a JPEG has no transparency: remove.bg answers the cutout on white
    try:
        # Soft edges always: the guided-filter alpha (output=alpha).
        render = render_request("alpha", background=None, background_image=background_image, crop=crop,
                                crop_margin=margin)
    except ApiError as exc:
        raise RemoveBgError(exc.code or "invalid_parameters", exc.detail) from None
    render = replace(render, background=colour, roi=roi, placement=placement)
    if channels == "alpha":
        render = replace(render, matte=True)  # the grey alpha alone, drawn and encoded by the service
    if encoding != "png":
        render = replace(render, encoding=encoding)  # type: ignore[arg-type]
    return RemoveBgOptions(render, channels, encoding, max_pixels_for(size), type_level != "none")
