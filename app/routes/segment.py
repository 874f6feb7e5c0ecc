"""POST /segment: an image in; a mask, the foreground probability and (with ground truth) Dice out."""
from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from app.deps import ServiceDep
from app.negotiation import preferred_type
from app.photo_source import photo_bytes
from app.schemas import ModelRef, SegmentResponse
from app.service import SegmentResult

router = APIRouter(tags=["segmentation"])

PNG_EXAMPLE = {"description": "the requested rendering as a PNG, with the numbers in `X-*` headers",
               "content": {"image/png": {}}}


def wants_png(request: Request, format: str | None) -> bool:
    """``?format=`` when given, else the ``Accept`` header's preference (JSON unless it prefers a PNG)."""
    if format is not None:
        return format == "png"
    return preferred_type(request.headers.get("accept"), ("application/json", "image/png")) == "image/png"


def png_response(result: SegmentResult, model: ModelRef) -> Response:
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
    return Response(result.output_png, media_type="image/png", headers=headers)


@router.post(
    "/segment",
    response_model=SegmentResponse,
    responses={200: PNG_EXAMPLE, 400: {"description": "empty, truncated or unreadable image; image_url could not be "
                                                    "fetched (the message says why)"},
               403: {"description": "image_url while PETSEG_ALLOW_URLS is off, or pointing at a loopback, "
                                    "private, link-local, multicast or reserved address"},
               413: {"description": "body or image over the configured limits"},
               415: {"description": "not an image format the service reads"},
               422: {"description": "missing field, bad threshold, unknown model, ground truth of the wrong size "
                                    "or not a mask"},
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
    output: Annotated[Literal["mask", "probability", "overlay", "cutout"], Form(
        description="mask (0/255), probability (8-bit map), overlay (image tinted where pet) or cutout "
                    "(RGBA, background transparent)")] = "mask",
    model: Annotated[str | None, Form(description="which model answers: a name from GET /models "
                                                  "(PETSEG_CHECKPOINTS); default: the first one",
                                      examples=["default"])] = None,
    format: Annotated[Literal["json", "png"] | None, Query(
        description="json or png; default from the Accept header (image/png gives the PNG itself)")] = None,
) -> SegmentResponse | Response:
    """Segment the pet: JSON with a base64 mask by default; the PNG itself with `Accept: image/png`."""
    image_bytes = await photo_bytes(request, image, image_url)
    truth_bytes = await ground_truth.read() if ground_truth is not None else None
    result = await service.segment(image_bytes, ground_truth=truth_bytes, threshold=threshold, output=output,
                                   model=model)
    info = service.models.get(result.model).segmenter.info
    answered_by = ModelRef(name=result.model, arch=info.arch, checkpoint_sha256=info.checkpoint_sha256)
    if wants_png(request, format):
        return png_response(result, answered_by)
    return SegmentResponse(
        width=result.width, height=result.height, threshold=result.threshold,
        foreground_probability=result.foreground_probability, foreground_fraction=result.foreground_fraction,
        dice=result.dice, mask_png=base64.b64encode(result.mask_png).decode(), output=result.output,
        output_png=base64.b64encode(result.output_png).decode() if result.output != "mask" else None,
        model=answered_by, inference_ms=round(result.inference_ms, 2),
    )
