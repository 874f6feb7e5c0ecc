"""POST /v1.0/removebg: remove.bg's API, so its clients and plugins work by changing the host.

The fields are remove.bg's (``app.removebg`` says which are supported); the answer is the image with
remove.bg's ``X-Width``/``X-Height``/``X-Type``/``X-Foreground-*`` headers (or
``{"data": {"result_b64": ...}}`` when JSON is preferred); every error, the service's own included, is
remove.bg's ``{"errors": [{"title": ...}]}``.
Requests come as multipart or urlencoded forms, or as a JSON object with the same names.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import cv2
from fastapi import APIRouter, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from app.compose import Box
from app.deps import ServiceDep
from app.errors import ApiError, count_refusal
from app.imaging import DecodedImage, decode_image
from app.negotiation import preferred_type
from app.photo_source import fetch_image_url
from app.removebg import parse_options
from app.service import SegmentResult

__all__ = ["REMOVEBG_PATH", "errors_body", "router"]

REMOVEBG_PATH = "/v1.0/removebg"
# remove.bg answers bad input with 400 whatever the cause; the service's other statuses stay as they are.
_AS_REMOVEBG = {415: 400, 422: 400}
FOREGROUND_TYPE = "animal"  # what remove.bg calls the foreground petseg finds


def errors_body(title: str) -> dict[str, Any]:
    return {"errors": [{"title": title}]}


def _errors_response(status: int, title: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(errors_body(title), status_code=_AS_REMOVEBG.get(status, status), headers=headers)


def _first_problem(exc: RequestValidationError) -> str:
    for error in exc.errors():
        where = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "header")]
        return f"{'.'.join(where) or 'request'}: {error.get('msg', 'invalid')}"
    return "invalid request"


class RemoveBgRoute(APIRoute):
    """A route whose every error, validation and the service's own, is remove.bg's error envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def in_envelope(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                count_refusal(exc)
                return _errors_response(exc.status_code, exc.detail, exc.headers)
            except RequestValidationError as exc:
                return _errors_response(400, _first_problem(exc))
            except HTTPException as exc:
                return _errors_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

        return in_envelope


router = APIRouter(tags=["remove.bg-compatible"], route_class=RemoveBgRoute)

IMAGE_ANSWER = {"description": "the cutout (PNG or JPEG) or its alpha matte, with `X-Width`, `X-Height`, "
                               "`X-Type`, `X-Foreground-Top/Left/Width/Height` and `X-Credits-Charged: 0`; "
                               "with `Accept: application/json`, `{\"data\": {\"result_b64\": ..., "
                               "\"foreground_top\": ...}}`",
                "content": {"image/png": {}, "image/jpeg": {}, "application/json": {}}}
ERROR = {"description": "`{\"errors\": [{\"title\": \"what is wrong\"}]}`"}


def _text_field(description: str, example: str | None = None) -> Any:
    return Form(description=description, examples=[example] if example else None)


@router.post(
    REMOVEBG_PATH,
    responses={200: IMAGE_ANSWER, 400: ERROR, 413: ERROR, 503: ERROR,
               403: {"description": "wrong or missing X-Api-Key, image_url off or at a non-public address"}},
    summary="Remove the background (remove.bg-compatible)",
    response_class=Response,
)
async def removebg(
    request: Request,
    service: ServiceDep,
    image_file: Annotated[UploadFile | None, File(description="the photo (one of image_file, image_file_b64, "
                                                              "image_url)")] = None,
    image_file_b64: Annotated[str | None, _text_field("the photo, base64-encoded")] = None,
    image_url: Annotated[str | None, _text_field(
        "the photo's http(s) URL, fetched by the service when PETSEG_ALLOW_URLS is on (see /segment's "
        "image_url)",
        "https://example.com/cat.jpg")] = None,
    size: Annotated[str | None, _text_field(
        "the answer's resolution: auto, full, 4k, 50MP (the photo's own), hd (up to 4 megapixels), medium "
        "(1.5), preview, small, regular (0.25); default auto", "auto")] = None,
    type: Annotated[str | None, _text_field(
        "auto, person, product, car, animal, graphic, transportation: accepted and ignored (the model finds "
        "pets); X-Type answers animal", "auto")] = None,
    type_level: Annotated[str | None, _text_field("none, 1, 2, latest: accepted and ignored")] = None,
    format: Annotated[str | None, _text_field(
        "auto (PNG when transparent, else JPEG), png, jpg; zip and webp are not supported", "png")] = None,
    roi: Annotated[str | None, _text_field("not supported: only `0% 0% 100% 100%` is accepted")] = None,
    crop: Annotated[str | None, _text_field("true: cut the answer to the pet (no pet found: 400)",
                                            "false")] = None,
    crop_margin: Annotated[str | None, _text_field(
        "with crop=true: space around the pet, px or % of its size; 1, 2 or 4 values", "10%")] = None,
    scale: Annotated[str | None, _text_field("not supported: only `original` is accepted")] = None,
    position: Annotated[str | None, _text_field("not supported: only `original` is accepted")] = None,
    channels: Annotated[str | None, _text_field(
        "rgba (the cutout) or alpha (only its alpha matte, grey; backgrounds are ignored)", "rgba")] = None,
    add_shadow: Annotated[str | None, _text_field("not supported: only false is accepted")] = None,
    semitransparency: Annotated[str | None, _text_field(
        "true (default): soft edges, the guided-filter alpha; false: the hard-edged mask")] = None,
    bg_color: Annotated[str | None, _text_field("a background colour: hex (81d4fa, #fff) or a name (green)",
                                                "ffffff")] = None,
    bg_image_url: Annotated[str | None, _text_field(
        "a background image's URL (same rules as image_url), scaled to cover")] = None,
    bg_image_file: Annotated[UploadFile | None, File(description="a background image, scaled to cover")] = \
        None,
    shadow_type: Annotated[str | None, _text_field("not supported")] = None,
    shadow_opacity: Annotated[str | None, _text_field("not supported")] = None,
    model: Annotated[str | None, _text_field("petseg's own: which model answers (GET /models)")] = None,
    x_api_key: Annotated[str | None, Header(
        alias="X-Api-Key", description="PETSEG_API_KEY, when the service has one (else not needed)")] = None,
) -> Response:
    """remove.bg's `POST /v1.0/removebg` on petseg's model: the pet cut out with soft edges, optionally over a
    colour or an image, cropped, resized, or only its alpha matte."""
    fields: dict[str, Any] = {name: value for name, value in {
        "image_file_b64": image_file_b64, "image_url": image_url, "size": size, "type": type,
        "type_level": type_level, "format": format, "roi": roi, "crop": crop, "crop_margin": crop_margin,
        "scale": scale, "position": position, "channels": channels, "add_shadow": add_shadow,
        "semitransparency": semitransparency, "bg_color": bg_color, "bg_image_url": bg_image_url,
        "shadow_type": shadow_type, "shadow_opacity": shadow_opacity, "model": model}.items()
        if value is not None}
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        fields = await _json_fields(request)
    photo = await _photo(request, image_file, fields)
    background = await _background(request, bg_image_file, fields)
    options = parse_options(fields, background_image=background)
    source: bytes | DecodedImage = photo
    if options.max_pixels is not None:
        source = await run_in_threadpool(_fit, photo, options.max_pixels, service.settings.max_pixels)
    result = await service.segment(source, output=options.render, model=fields.get("model") or None,
                                   foreground_box=True)
    image, media_type = result.output_png, result.media_type
    foreground = _foreground(result)
    width, height = (result.crop.width, result.crop.height) if result.crop else (result.width, result.height)
    headers = {"X-Width": str(width), "X-Height": str(height), "X-Type": FOREGROUND_TYPE,
               "X-Credits-Charged": "0", "X-Model-Name": result.model,
               "X-Foreground-Top": str(foreground.y), "X-Foreground-Left": str(foreground.x),
               "X-Foreground-Width": str(foreground.width), "X-Foreground-Height": str(foreground.height)}
    if preferred_type(request.headers.get("accept"), ("image/*", "application/json")) == "application/json":
        return JSONResponse({"data": {"result_b64": base64.b64encode(image).decode(),
                                      "foreground_top": foreground.y, "foreground_left": foreground.x,
                                      "foreground_width": foreground.width,
                                      "foreground_height": foreground.height}}, headers=headers)
    return Response(image, media_type=media_type, headers=headers)


async def _json_fields(request: Request) -> dict[str, Any]:
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the JSON body does not parse") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "the JSON body must be an object of remove.bg's fields")
    if "image_file" in payload or "bg_image_file" in payload:
        raise ApiError(400, "image_file and bg_image_file are file uploads: send them as "
                            "multipart/form-data, or use image_file_b64 / image_url")
    return payload


async def _photo(request: Request, image_file: UploadFile | None, fields: dict[str, Any]) -> bytes:
    given = [name for name, present in (("image_file", image_file is not None),
                                        ("image_file_b64", bool(fields.get("image_file_b64"))),
                                        ("image_url", bool(fields.get("image_url")))) if present]
    if not given:
        raise ApiError(400, "no image given: send image_file, image_file_b64 or image_url")
    if len(given) > 1:
        raise ApiError(400, f"send one image source, not {' and '.join(given)}")
    if image_file is not None:
        return await image_file.read()
    if given == ["image_file_b64"]:
        return _from_base64(str(fields["image_file_b64"]))
    return await fetch_image_url(request, str(fields["image_url"]))


async def _background(request: Request, bg_image_file: UploadFile | None, fields: dict[str, Any]
                      ) -> bytes | None:
    url = fields.get("bg_image_url")
    if bg_image_file is not None and url:
        raise ApiError(400, "bg_image_file: give bg_image_file or bg_image_url, not both")
    if bg_image_file is not None:
        return await bg_image_file.read()
    return await fetch_image_url(request, str(url)) if url else None


def _from_base64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_file_b64 is not valid base64") from None


def _fit(photo: bytes, max_answer_pixels: int, max_pixels: int) -> DecodedImage:
    """The photo, decoded and shrunk (INTER_AREA) to at most ``max_answer_pixels``; as it is when it fits. JPEGs
    decode at a reduced DCT scale that still leaves both sides at least the target's. The pixels go to the
    service as they are: a PNG in between cost more than the rest of the request at 4 megapixels."""
    decoded = decode_image(photo, max_pixels=max_pixels, draft_size=math.isqrt(max_answer_pixels) + 1)
    if decoded.width * decoded.height <= max_answer_pixels:
        return decoded  # a draft never shrinks a photo that fits: both its sides cannot exceed the target's
    scale = math.sqrt(max_answer_pixels / (decoded.width * decoded.height))
    size = (max(1, math.floor(decoded.width * scale)), max(1, math.floor(decoded.height * scale)))
    return DecodedImage(cv2.resize(decoded.rgb, size, interpolation=cv2.INTER_AREA), *size, decoded.format)


def _foreground(result: SegmentResult) -> Box:
    """The pet's bounding box in the answer's pixels (from the mask; all zero when no pet was found)."""
    box = result.foreground
    assert box is not None, "segment(..., foreground_box=True) finds the box"
    if box.width == 0 or result.crop is None:
        return box
    crop = result.crop
    left, top = max(box.x - crop.x, 0), max(box.y - crop.y, 0)
    right = min(box.x + box.width - crop.x, crop.width)
    bottom = min(box.y + box.height - crop.y, crop.height)
    return Box(left, top, max(right - left, 0), max(bottom - top, 0))
