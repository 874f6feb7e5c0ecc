"""What a segmentation answer shows besides the mask: the rendering options, their checks, and the rendering.

``RenderRequest`` holds the options (output, soft edges, background, crop, PNG or JPEG); ``render_request``
builds one from form values and refuses contradictions with a 422 that names the field; ``render`` draws and
encodes. No HTTP here: ``/segment`` and any other endpoint share it.

The default request (``output=mask`` as a PNG) never comes here: the service keeps its fast path for it.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from PIL import Image

from app.compose import (
    Box,
    Colour,
    Margin,
    TranslucentColour,
    composite,
    crop_to_subject,
    parse_colour,
    parse_margin,
    subject_box,
)
from app.errors import ApiError
from app.imaging import encode_mask_png, encode_png
from app.placement import Placement, RegionError, Roi, keep_inside, place_subject
from app.postprocess import FullSizePrediction
from models.imaging.overlay import tint
from models.imaging.refine import guided_upsample

__all__ = ["ALPHA_CONTRAST", "JPEG_QUALITY", "OUTPUTS", "RenderRequest", "Rendered", "render", "render_request"]

OUTPUTS: tuple[str, ...] = ("mask", "probability", "overlay", "cutout", "alpha")
Encoding = Literal["png", "jpeg", "zip"]  # zip: remove.bg's color.jpg + alpha.png
# The soft alpha is the guided-filter-refined probability steepened around 0.5 (models.imaging.refine, ``contrast``):
# below 0.375 clear, above 0.625 opaque, graded in between, so that where the model is merely fairly sure
# (0.9 on the pet, 0.1 on the background) the cutout is opaque or clear rather than faintly see-through.
ALPHA_CONTRAST = 4.0
JPEG_QUALITY = 90
_CUTOUTS = ("cutout", "alpha")


@dataclass(frozen=True)
class RenderRequest:
    output: str = "mask"
    soft: bool = False  # cutout: the refined soft alpha instead of the thresholded mask (alpha: always)
    # cutout and alpha: a colour under the pet (with an opacity: see-through, an RGBA answer); None: transparent
    background: Colour | TranslucentColour | None = None
    background_image: bytes | None = None  # cutout and alpha: an image under the pet, scaled to cover
    crop: bool = False  # cut the answer to the pet's bounding box
    crop_margin: Margin = field(default_factory=Margin)
    encoding: Encoding = "png"
    # cutout and alpha: only the alpha channel, grey (remove.bg's channels=alpha); backgrounds do not apply
    matte: bool = False
    roi: Roi | None = None  # only pixels inside can be the pet (remove.bg's roi); mask and alpha are 0 outside
    placement: Placement | None = None  # cutout and alpha: the pet scaled and moved on the canvas

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}")
        if self.matte and (self.output not in _CUTOUTS or self.background or self.background_image):
            raise ValueError("a matte is the alpha of output=cutout or alpha, with no background")

    @property
    def soft_alpha(self) -> bool:
        return self.output == "alpha" or (self.output == "cutout" and self.soft)

    @property
    def needs_photo(self) -> bool:
        """Whether the full-size photo is painted on or guides the soft alpha (else the model's draft decode is
        enough: a hard-edged matte is the mask)."""
        if self.matte:
            return self.soft_alpha or self.encoding == "zip" or self.placement is not None
        return self.output in ("overlay", *_CUTOUTS)

    @property
    def transparent(self) -> bool:
        see_through = self.background is not None and len(self.background) == 4 and self.background[3] < 255
        return (self.output in _CUTOUTS and not self.matte and self.background_image is None
                and (self.background is None or see_through))

    def roi_box(self, width: int, height: int) -> Box | None:
        """The region of interest in a ``width`` x ``height`` photo; a 400 with remove.bg's code when it does
        not fit; None when there is none (or it is the whole photo)."""
        if self.roi is None or self.roi.is_whole_image:
            return None
        try:
            return self.roi.box(width, height)
        except RegionError as exc:
            raise ApiError(400, f"roi: {exc}", code=exc.code) from None

    @property
    def is_default(self) -> bool:
        """The plain mask PNG: the service's fast path, which never calls ``render``."""
        return self.output == "mask" and not self.crop and self.encoding == "png"

    def as_jpeg(self) -> RenderRequest:
        """The same rendering as a JPEG; a 422 naming ``format`` when it has a transparent background."""
        if self.transparent:
            raise ApiError(422, f"format: a JPEG cannot hold the transparent background of output={self.output}; "
                                "add background=#RRGGBB (or a background_image), or ask for format=png")
        return replace(self, encoding="jpeg")


def _given(value: str | None) -> bool:
    return value is not None and value.strip() != ""


def render_request(output: str = "mask", *, soft: bool | None = None, background: str | None = None,
                   background_image: bytes | None = None, crop: bool = False, crop_margin: str | None = None,
                   encoding: Encoding = "png") -> RenderRequest:
    """Check the options together and build the request; every refusal is a 422 whose message starts with the
    field at fault. Blank text fields count as not given (an HTML form sends its empty inputs)."""
    if output not in OUTPUTS:
        raise ApiError(422, f"output: {output!r} is not one of {', '.join(OUTPUTS)}")
    is_cutout = output in _CUTOUTS
    if soft is not None and not is_cutout:
        raise ApiError(422, f"soft: applies to output=cutout (and alpha, which is always soft), not {output}")
    if soft is False and output == "alpha":
        raise ApiError(422, "soft: output=alpha is always soft; ask for output=cutout for the hard-edged cutout")
    colour = None
    if _given(background):
        if not is_cutout:
            raise ApiError(422, f"background: applies to output=cutout or alpha, not {output}")
        try:
            colour = parse_colour(background)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ApiError(422, f"background: {exc}") from None
    if background_image is not None:
        if not is_cutout:
            raise ApiError(422, f"background_image: applies to output=cutout or alpha, not {output}")
        if _given(background):
            raise ApiError(422, "background_image: give background (a colour) or background_image, not both")
    margin = Margin()
    if _given(crop_margin):
        if not crop:
            raise ApiError(422, "crop_margin: applies only with crop=true")
        try:
            margin = parse_margin(crop_margin)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ApiError(422, f"crop_margin: {exc}") from None
    request = RenderRequest(output, bool(soft), colour, background_image, crop, margin)
    return request.as_jpeg() if encoding == "jpeg" else request


@dataclass(frozen=True)
class Rendered:
    data: bytes
    media_type: str  # image/png or image/jpeg
    box: Box | None  # the crop, in the photo's pixels; None when not cropped
    subject: Box | None = None  # with a placement: the pet's box in the answer's pixels (0x0: no pet)


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _zip(colour: np.ndarray, alpha: np.ndarray) -> Rendered:
    """remove.bg's ZIP answer: ``color.jpg`` (the colours, RGB) and ``alpha.png`` (the alpha matte, grey),
    stored without compression (both are compressed already)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("color.jpg", _jpeg(np.ascontiguousarray(colour)))
        archive.writestr("alpha.png", encode_png(np.ascontiguousarray(alpha)))
    return Rendered(buffer.getvalue(), "application/zip", None)


def _encode(array: np.ndarray, encoding: Encoding, is_mask: bool) -> Rendered:
    if encoding == "jpeg":
        return Rendered(_jpeg(array), "image/jpeg", None)
    return Rendered(encode_mask_png(array) if is_mask else encode_png(array), "image/png", None)


def render(request: RenderRequest, prediction: FullSizePrediction, prob_small: np.ndarray,
           rgb: np.ndarray | None, background: np.ndarray | None = None, *, threshold: float = 0.5) -> Rendered:
    """Draw and encode the requested rendering at the photo's size (or cropped to the pet).

    ``prediction`` is the full-size mask and probability; ``prob_small`` the model's map, which the soft alpha
    refines along ``rgb`` (the full-size photo; needed by overlay, cutout and alpha); ``background`` the
    decoded ``background_image``. An empty mask with ``crop`` is a 422: there is nothing to crop to."""
    mask, probability = prediction.mask, prediction.probability
    if rgb is not None and rgb.shape[:2] != mask.shape:
        raise ValueError(f"the photo is {rgb.shape[1]}x{rgb.shape[0]} but the mask {mask.shape[1]}x{mask.shape[0]}: "
                         "renderings need the full-size photo")
    alpha = mask
    if request.soft_alpha:
        assert rgb is not None, "the soft alpha needs the full-size photo"
        alpha = guided_upsample(prob_small, rgb, contrast=ALPHA_CONTRAST, dtype=np.uint8)
    region = request.roi_box(mask.shape[1], mask.shape[0])
    if region is not None:  # the mask is restricted already (service._finish); the refined alpha is not
        alpha = keep_inside(alpha, region)
    if request.placement is not None and request.output in _CUTOUTS:
        assert rgb is not None, "a cutout needs the full-size photo"
        rgb, alpha = place_subject(rgb, alpha, request.placement)
    box = None
    if request.crop:
        _, box = crop_to_subject(alpha, alpha, request.crop_margin)
        if box is None:
            where = "anywhere in the soft alpha" if request.soft_alpha else f"at threshold {threshold:g}"
            raise ApiError(422, f"crop: no pet found in the image ({where}), so there is nothing to crop to; "
                                f"{'leave' if request.soft_alpha else 'lower the threshold or leave'} crop out",
                           code="unknown_foreground")
        rows, cols = box.slices()
        mask, probability, alpha = mask[rows, cols], probability[rows, cols], alpha[rows, cols]
        rgb = rgb[rows, cols] if rgb is not None else None
    if request.output == "mask":
        array = mask
    elif request.matte:
        array = alpha
    elif request.output == "probability":
        array = probability
    elif request.output == "overlay":
        assert rgb is not None, "the overlay needs the full-size photo"
        array = tint(rgb, mask)
    else:
        assert rgb is not None, "a cutout needs the full-size photo"
        array = composite(rgb, alpha, background if background is not None else request.background)
    # the half-opaque part: where the mask would be (the soft alpha crosses 128 where the probability crosses 0.5)
    subject = (subject_box(alpha, level=127) or Box(0, 0, 0, 0)) if request.placement is not None else None
    if request.encoding == "zip":
        assert rgb is not None, "a ZIP answer holds the photo's colours"
        opaque = array.ndim == 3 and array.shape[2] == 3  # over a colour or an image: nothing is see-through
        colour = array[..., :3] if array.ndim == 3 else rgb
        matte = np.full(alpha.shape, 255, np.uint8) if opaque else (array[..., 3] if array.ndim == 3 else alpha)
        return replace(_zip(colour, matte), box=box, subject=subject)
    hard_edged = request.output == "mask" or (request.matte and not request.soft_alpha)
    rendered = _encode(np.ascontiguousarray(array), request.encoding, is_mask=hard_edged)
    return Rendered(rendered.data, rendered.media_type, box, subject)
