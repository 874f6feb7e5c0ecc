"""POST /v1.0/removebg: remove.bg's API, so its clients and plugins work by changing the host.

The fields are remove.bg's (``app.removebg`` says what each does here); the answer is the image (or remove.bg's
ZIP) with remove.bg's ``X-Width``/``X-Height``/``X-Type``/``X-Foreground-*`` headers (or
``{"data": {"result_b64": ...}}`` when JSON is preferred); every error, the service's own included, is
remove.bg's ``{"errors": [{"title", "code", "detail"}]}`` with remove.bg's status: 400 for anything about the
request (too large, too many pixels, no pet found...), 403 for the key, 429 with ``Retry-After`` and
``X-RateLimit-*`` when the queue is full. ``GET /v1.0/account`` answers remove.bg's balance.
Requests come as multipart or urlencoded forms, or as a JSON object with the same names.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import time
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
from app.removebg import RemoveBgError, parse_options
from app.service import SegmentResult

__all__ = ["ACCOUNT_PATH", "REMOVEBG_PATH", "errors_body", "router"]

REMOVEBG_PATH = "/v1.0/removebg"
ACCOUNT_PATH = "/v1.0/account"
FOREGROUND_TYPE = "animal"  # what remove.bg calls the foreground petseg finds
# remove.bg's titles for its codes (the detail says what exactly); other codes read "Invalid <field> ...".
TITLES = {
    "auth_failed": "Authentication failed", "failed_bg_download": "Failed to download background image",
    "failed_image_download": "Failed to download image", "failed_to_read_image": "There was an error reading the "
    "image", "file_too_large": "File too large", "invalid_file_type": "Invalid file type",
    "invalid_parameters": "Invalid parameters",
    "missing_source": "No image given", "multiple_bg_sources": "Multiple background sources given",
    "multiple_sources": "Multiple image sources given", "rate_limit_exceeded": "Rate limit exceeded",
    "resolution_too_high": "Image resolution too high", "roi_exceeds_bounds": "ROI exceeds image bounds",
    "roi_region_empty": "ROI region is empty", "service_unavailable": "Service unavailable",
    "unknown_foreground": "Could not identify foreground in image",
}


def errors_body(code: str, detail: str) -> dict[str, Any]:
    """remove.bg's error envelope: one error with its title, code and detail."""
    field = code.removeprefix("invalid_").replace("_", " ")
    title = TITLES.get(code) or (f"Invalid {field} parameter given" if code.startswith("invalid_") else detail)
    return {"errors": [{"title": title, "code": code, "detail": detail}]}


def removebg_error(exc: ApiError, max_queue: int) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, body and headers remove.bg would answer for one of the service's errors: every problem with
    the request is a 400 with its code; a full queue is remove.bg's rate limit (429)."""
    status, code, headers = exc.status_code, exc.code, dict(exc.headers)
    if status == 413:
        status, code = 400, code or "file_too_large"
    elif status == 415:
        status, code = 400, "invalid_file_type"
    elif status == 422:
        status, code = 400, code or "invalid_parameters"
    elif status == 400:
        code = code or "failed_to_read_image"
    elif status == 503 and exc.reason == "queue_full":
        retry = int(headers.get("Retry-After", "1"))
        status, code = 429, "rate_limit_exceeded"
        headers.update({"Retry-After": str(retry), "X-RateLimit-Limit": str(max_queue),
                        "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + retry)})
    elif status == 503:
        code = code or "service_unavailable"
    return status, errors_body(code or "unknown_error", exc.detail), headers


def _errors_response(request: Request, exc: ApiError) -> JSONResponse:
    status, body, headers = removebg_error(exc, request.app.state.settings.max_queue)
    return JSONResponse(body, status_code=status, headers=headers)


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
                return _errors_response(request, exc)
            except RequestValidationError as exc:
                return _errors_response(request, ApiError(400, _first_problem(exc), code="invalid_parameters"))
            except HTTPException as exc:
                return _errors_response(request, ApiError(exc.status_code, str(exc.detail), dict(exc.headers or {})))

        return in_envelope


router = APIRouter(tags=["remove.bg-compatible"], route_class=RemoveBgRoute)

IMAGE_ANSWER = {"description": "the cutout (PNG or JPEG) or its alpha matte, with `X-Width`, `X-Height`, "
                               "`X-Type`, `X-Foreground-Top/Left/Width/Height` and `X-Credits-Charged: 0`; "
                               "with `Accept: application/json`, `{\"data\": {\"result_b64\": ..., "
                               "\"foreground_top\": ...}}`",
                "content": {"image/png": {}, "image/jpeg": {}, "application/json": {}}}
ERROR = {"description": "`{\"errors\": [{\"title\": \"Invalid roi parameter given\", \"code\": \"invalid_roi\", "
                        "\"detail\": \"what is wrong\"}]}`"}


def _text_field(description: str, example: str | None = None) -> Any:
    return Form(description=description, examples=[example] if example else None)


@router.post(
    REMOVEBG_PATH,
    responses={200: IMAGE_ANSWER, 400: ERROR, 503: ERROR,
               422: {"description": "never on this route: as at remove.bg, a field that does not validate is a "
                                    "400 with its code"},
               403: {"description": "wrong or missing X-Api-Key (code auth_failed)"},
               429: {"description": "the queue is full (code rate_limit_exceeded): `Retry-After`, "
                                    "`X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`"}},
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
        "(1.5), preview, small, regular (0.25); default PETSEG_REMOVEBG_DEFAULT_SIZE (auto; remove.bg's is "
        "preview)", "auto")] = None,
    type: Annotated[str | None, _text_field(
        "auto, person, product, car, animal, graphic, transportation: accepted and ignored (the model finds "
        "pets); X-Type answers animal", "auto")] = None,
    type_level: Annotated[str | None, _text_field("none (no X-Type header), 1, 2, latest")] = None,
    format: Annotated[str | None, _text_field(
        "auto (PNG when transparent, else JPEG), png, jpg, zip (color.jpg and alpha.png); webp is not "
        "supported", "png")] = None,
    roi: Annotated[str | None, _text_field(
        "region of interest `x1 y1 x2 y2`, px or %: nothing outside it is the pet", "0% 0% 100% 100%")] = None,
    crop: Annotated[str | None, _text_field("true: cut the answer to the pet (no pet found: 400)",
                                            "false")] = None,
    crop_margin: Annotated[str | None, _text_field(
        "with crop=true: space around the pet, px or % of its size (at most 50% or 500px); 1, 2 or 4 values; "
        "ignored without crop", "10%")] = None,
    scale: Annotated[str | None, _text_field(
        "original, or 10%-100%: the pet's share of the canvas (implies position=center)", "original")] = None,
    position: Annotated[str | None, _text_field(
        "original, center, or one or two percentages (horizontal, vertical): where the pet goes",
        "original")] = None,
    channels: Annotated[str | None, _text_field(
        "rgba (the cutout) or alpha (only its alpha matte, grey; backgrounds are ignored)", "rgba")] = None,
    add_shadow: Annotated[str | None, _text_field("true or false: accepted and ignored (remove.bg draws "
                                                  "shadows under cars only)")] = None,
    semitransparency: Annotated[str | None, _text_field(
        "true or false: accepted and ignored (remove.bg makes car windows see-through; the pet's soft edges "
        "are the same either way)")] = None,
    bg_color: Annotated[str | None, _text_field(
        "a background colour: hex (81d4fa, #fff; 4 or 8 digits for a see-through one, 81d4fa77) or a name "
        "(green)", "ffffff")] = None,
    bg_image_url: Annotated[str | None, _text_field(
        "a background image's URL (same rules as image_url), scaled to cover")] = None,
    bg_image_file: Annotated[UploadFile | None, File(description="a background image, scaled to cover")] = \
        None,
    shadow_type: Annotated[str | None, _text_field("car, 3D, drop: accepted and ignored")] = None,
    shadow_opacity: Annotated[str | None, _text_field("0-100: accepted and ignored")] = None,
    shadow_method: Annotated[str | None, _text_field("legacy, latest: accepted and ignored")] = None,
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
        "shadow_type": shadow_type, "shadow_opacity": shadow_opacity, "shadow_method": shadow_method,
        "model": model}.items()
        if value is not None}
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        fields = await _json_fields(request)
    settings = service.settings
    given_background = bg_image_file is not None or bool(fields.get("bg_image_url"))
    # The fields first, then the downloads: a request refused for its fields costs no fetch.
    parse_options(fields, background_image=None, has_background_source=given_background,
                  default_size=settings.removebg_default_size)
    photo = await _photo(request, image_file, fields)
    background = await _background(request, bg_image_file, fields)
    options = parse_options(fields, background_image=background, has_background_source=given_background,
                            default_size=settings.removebg_default_size)
    source: bytes | DecodedImage = photo
    if options.max_pixels is not None:
        source = await run_in_threadpool(_fit, photo, options.max_pixels, settings.max_pixels)
    result = await service.segment(source, output=options.render, model=fields.get("model") or None,
                                   foreground_box=True)
    if result.foreground is not None and result.foreground.width == 0:
        where = " inside roi" if options.render.roi_box(result.width, result.height) else ""
        raise RemoveBgError("unknown_foreground", f"no pet found in the image{where}: this service cuts out "
                                                  "cats and dogs")
    image, media_type = result.output_png, result.media_type
    foreground = result.subject if result.subject is not None else _foreground(result)
    width, height = (result.crop.width, result.crop.height) if result.crop else (result.width, result.height)
    headers = {"X-Width": str(width), "X-Height": str(height),
               "X-Credits-Charged": "0", "X-Model-Name": result.model,
               "X-Foreground-Top": str(foreground.y), "X-Foreground-Left": str(foreground.x),
               "X-Foreground-Width": str(foreground.width), "X-Foreground-Height": str(foreground.height)}
    if options.type_header:
        headers["X-Type"] = FOREGROUND_TYPE
    if preferred_type(request.headers.get("accept"), ("image/*", "application/json")) == "application/json":
        return JSONResponse({"data": {"result_b64": base64.b64encode(image).decode(),
                                      "foreground_top": foreground.y, "foreground_left": foreground.x,
                                      "foreground_width": foreground.width,
                                      "foreground_height": foreground.height}}, headers=headers)
    return Response(image, media_type=media_type, headers=headers)


@router.get(ACCOUNT_PATH, summary="Credit balance (remove.bg-compatible)",
            responses={403: {"description": "wrong or missing X-Api-Key (code auth_failed)"}})
async def account(request: Request) -> dict[str, Any]:
    """remove.bg's `GET /v1.0/account`, for clients that check the balance before they send: this service
    charges no credits, so the balance is PETSEG_REMOVEBG_CREDITS and never goes down."""
    credits = float(request.app.state.settings.removebg_credits)
    return {"data": {"attributes": {
        "credits": {"total": credits, "subscription": credits, "payg": 0.0, "enterprise": 0.0},
        "api": {"free_calls": int(credits), "sizes": "all"}}}}


async def _json_fields(request: Request) -> dict[str, Any]:
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RemoveBgError("invalid_json", "the JSON body does not parse") from None
    if not isinstance(payload, dict):
        raise RemoveBgError("invalid_json", "the JSON body must be an object of remove.bg's fields")
    if "image_file" in payload or "bg_image_file" in payload:
        raise RemoveBgError("invalid_json", "image_file and bg_image_file are file uploads: send them as "
                                            "multipart/form-data, or use image_file_b64 / image_url")
    return payload


async def _photo(request: Request, image_file: UploadFile | None, fields: dict[str, Any]) -> bytes:
    given = [name for name, present in (("image_file", image_file is not None),
                                        ("image_file_b64", bool(fields.get("image_file_b64"))),
                                        ("image_url", bool(fields.get("image_url")))) if present]
    if not given:
        raise RemoveBgError("missing_source", "no image given: send image_file, image_file_b64 or image_url")
    if len(given) > 1:
        raise RemoveBgError("multiple_sources", f"send one image source, not {' and '.join(given)}")
    if image_file is not None:
        return await image_file.read()
    if given == ["image_file_b64"]:
        return _from_base64(str(fields["image_file_b64"]))
    return await _download(request, str(fields["image_url"]), "image_url", "failed_image_download")


async def _download(request: Request, url: str, field: str, code: str) -> bytes:
    """A photo by URL under the service's rules (``app.url_fetch``); any refusal or failure is remove.bg's 400
    with ``code`` (a photo over the byte limit: file_too_large), the message naming ``field``."""
    try:
        return await fetch_image_url(request, url)
    except ApiError as exc:
        detail = exc.detail if exc.detail.startswith(field) else f"{field}: {exc.detail.removeprefix('image_url: ')}"
        raise ApiError(400, detail, code="file_too_large" if exc.status_code == 413 else code) from None


async def _background(request: Request, bg_image_file: UploadFile | None, fields: dict[str, Any]
                      ) -> bytes | None:
    url = fields.get("bg_image_url")
    if bg_image_file is not None and url:
        raise RemoveBgError("multiple_bg_sources", "bg_image_file: give one background source: bg_color, "
                                                   "bg_image_url or bg_image_file")
    if bg_image_file is not None:
        return await bg_image_file.read()
    return await _download(request, str(url), "bg_image_url", "failed_bg_download") if url else None


def _from_base64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RemoveBgError("failed_to_read_image", "image_file_b64 is not valid base64") from None


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
