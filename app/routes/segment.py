"""POST /segment: an image in; a mask, the foreground probability and (with ground truth) Dice out."""
from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from app.deps import ServiceDep
from app.form_fields import declared_form_fields, reject_unknown_form_fields
from app.negotiation import preferred_type
from app.photo_source import photo_bytes
from app.rendering import render_request
from app.schemas import CropBox, ModelRef, SegmentResponse
from app.service import SegmentResult

router = APIRouter(tags=["segmentation"])

PNG_EXAMPLE = {"description": "the requested rendering as a PNG (or a JPEG with `format=jpeg`), with the "
                              "numbers in `X-*` headers", "content": {"image/png": {}, "image/jpeg": {}}}
_ANSWERS = {"application/json": "json", "image/png": "png", "image/jpeg": "jpeg"}


def answer_format(request: Request, format: str | None, jpeg_possible: bool) -> str:
    """``?format=`` when given, else the ``Accept`` header's preference: JSON unless it prefers a PNG, or a
    JPEG where the rendering has no transparency."""
    if format is not None:
        return format
    offered = ("application/json", "image/png", "image/jpeg")
    return _ANSWERS[preferred_type(request.headers.get("accept"), offered if jpeg_possible else offered[:2])]


def image_response(result: SegmentResult, model: ModelRef) -> Response:
    headers = {
        "X-Foreground-Probability": f"{result.foreground_probability:.6f}",
        "X-Foreground-Fraction": f"{result.foreground_fraction:.6f}",
        "X-Image-Size": f"{result.width}x{result.height}",
        "X-Threshold": f"{result.threshold:g}",
        "X-Inference-Ms": f"{result.inference_ms:.1f}",
        "X-Model": model.arch,
        "X-Model-Name": model.name,
    }
    if result.dice is not None:
        headers["X-Dice"] = f"{result.dice:.6f}"
    if result.crop is not None:
        box = result.crop
        headers["X-Crop"] = f"{box.x},{box.y},{box.width},{box.height}"
    return Response(result.output_png, media_type=result.media_type, headers=headers)


@router.post(
    "/segment",
    response_model=SegmentResponse,
    responses={200: PNG_EXAMPLE, 400: {"description": "empty, truncated or unreadable image; image_url could not be "
                                                    "fetched (the message says why)"},
               403: {"description": "image_url while PETSEG_ALLOW_URLS is off, or pointing at a loopback, "
                                    "private, link-local, multicast or reserved address"},
               413: {"description": "body or image over the configured limits"},
               415: {"description": "not an image format the service reads"},
               422: {"description": "missing or unknown field, bad threshold, unknown model, ground truth of "
                                    "the wrong size or not a mask, a rendering option that does not fit the "
                                    "output (the message names the field), or crop=true with no pet found"},
               503: {"description": "model not ready or at capacity; see Retry-After"}},
    summary="Segment the pet in an image",
)
async def segment(
    request: Request,
    service: ServiceDep,
    image: Annotated[UploadFile | None, File(description="the photo: JPEG, PNG, WebP, BMP or TIFF, any mode; EXIF "
                                                         "orientation is applied. Required unless image_url is "
                                                         "sent")] = None,
    image_url: Annotated[str | None, Form(
        description="instead of image: an http(s) URL the service downloads the photo from, when "
                    "PETSEG_ALLOW_URLS is on (loopback, private and other non-public addresses are refused; at "
                    "most 3 redirects; the upload byte limit applies)",
        examples=["https://example.com/cat.jpg"])] = None,
    ground_truth: Annotated[UploadFile | None, File(description="optional PNG mask (0/255, 0/1 or an Oxford "
                                                               "trimap 1/2/3) of the image's size; adds Dice")] = None,
    threshold: Annotated[float | None, Form(ge=0.0, le=1.0, description="probability above which a pixel is "
                                                                     "pet; default from PETSEG_THRESHOLD",
                                            examples=[0.5])] = None,
    output: Annotated[Literal["mask", "probability", "overlay", "cutout", "alpha"], Form(
        description="mask (0/255), probability (8-bit map), overlay (image tinted where pet), cutout (RGBA, "
                    "background transparent, hard edges) or alpha (RGBA whose alpha is the probability refined "
                    "along the photo's edges by a guided filter: opaque on the pet, clear on the background, "
                    "graded on fur and outlines; the same as cutout with soft=true)")] = "mask",
    soft: Annotated[bool | None, Form(
        description="cutout only: true gives the cutout the soft, edge-refined alpha of output=alpha instead of "
                    "the thresholded mask (default false)")] = None,
    background: Annotated[str | None, Form(
        description="cutout and alpha: `#RRGGBB` (also RRGGBB or #RGB) composites the pet over that colour "
                    "and answers RGB; `transparent` (the default) keeps the RGBA", examples=["#ffffff"])] = None,
    background_image: Annotated[UploadFile | None, File(
        description="cutout and alpha: an image to composite the pet over, scaled to cover the answer and "
                    "centre-cropped (any format `image` takes); not with `background`")] = None,
    crop: Annotated[bool, Form(
        description="cut the answer (any output) to the pet's bounding box; the box is in the X-Crop header "
                    "or the JSON's `crop`. No pet found: 422")] = False,
    crop_margin: Annotated[str | None, Form(
        description="with crop=true: space around the pet, in pixels (`20` or `20px`) or percent of the pet's "
                    "size (`10%`); one value, two (top/bottom left/right) or four (top right bottom left); "
                    "never past the photo's edges", examples=["10%"])] = None,
    model: Annotated[str | None, Form(description="which model answers: a name from GET /models "
                                                  "(PETSEG_CHECKPOINTS); default: the first one",
                                      examples=["default"])] = None,
    format: Annotated[Literal["json", "png", "jpeg"] | None, Query(
        description="the answer: json (with base64 PNGs), png (the rendering itself) or jpeg (the rendering "
                    "as a JPEG: not for a transparent cutout or alpha); default from the Accept header "
                    "(image/png gives the PNG, image/jpeg the JPEG where there is no transparency)")] = None,
) -> SegmentResponse | Response:
    """Segment the pet: JSON with a base64 mask by default; the rendering itself with `Accept: image/png` or
    `?format=png|jpeg`. Cutouts can have soft edges, a new background and a crop to the pet."""
    await reject_unknown_form_fields(request, SEGMENT_FIELDS)
    background_bytes = await background_image.read() if background_image is not None else None
    options = render_request(output, soft=soft, background=background, background_image=background_bytes,
                             crop=crop, crop_margin=crop_margin)  # options are checked before any photo is read
    answer = answer_format(request, format, jpeg_possible=not options.transparent)
    if answer == "jpeg":
        options = options.as_jpeg()
    image_bytes = await photo_bytes(request, image, image_url)
    truth_bytes = await ground_truth.read() if ground_truth is not None else None
    result = await service.segment(image_bytes, ground_truth=truth_bytes, threshold=threshold, output=options,
                                   model=model)
    info = service.models.get(result.model).segmenter.info
    answered_by = ModelRef(name=result.model, arch=info.arch, checkpoint_sha256=info.checkpoint_sha256)
    if answer != "json":
        return image_response(result, answered_by)
    box = result.crop
    return SegmentResponse(
        width=result.width, height=result.height, threshold=result.threshold,
        foreground_probability=result.foreground_probability, foreground_fraction=result.foreground_fraction,
        dice=result.dice, mask_png=base64.b64encode(result.mask_png).decode(), output=result.output,
        output_png=base64.b64encode(result.output_png).decode() if not options.is_default else None,
        crop=CropBox(x=box.x, y=box.y, width=box.width, height=box.height) if box is not None else None,
        model=answered_by, inference_ms=round(result.inference_ms, 2),
    )


SEGMENT_FIELDS = declared_form_fields(segment)  # a misspelt field is refused by name, not silently ignored
