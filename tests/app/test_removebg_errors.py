"""remove.bg's error envelope and the route's helpers, without HTTP: every status the service can refuse with as
remove.bg answers it, the first problem of a validation error, base64 photos, the size cap, the pet's box."""
from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError

from app.compose import Box
from app.errors import ApiError
from app.removebg import RemoveBgError
from app.routes import removebg as route
from tests.factories import jpeg_bytes, png_bytes


@pytest.mark.parametrize(("code", "title"), [
    ("file_too_large", "File too large"), ("unknown_foreground", "Could not identify foreground in image"),
    ("invalid_crop_margin", "Invalid crop margin parameter given"), ("odd_code", "the detail"),
])
def test_an_error_has_remove_bgs_title_for_its_code(code: str, title: str) -> None:
    assert route.errors_body(code, "the detail") == {"errors": [{"title": title, "code": code,
                                                                 "detail": "the detail"}]}


@pytest.mark.parametrize(("status", "code", "expected"), [
    (413, None, (400, "file_too_large")), (413, "resolution_too_high", (400, "resolution_too_high")),
    (415, "anything", (400, "invalid_file_type")), (422, None, (400, "invalid_parameters")),
    (422, "invalid_roi", (400, "invalid_roi")), (400, None, (400, "failed_to_read_image")),
    (400, "roi_region_empty", (400, "roi_region_empty")), (503, None, (503, "service_unavailable")),
    (503, "shutting_down", (503, "shutting_down")), (403, "auth_failed", (403, "auth_failed")),
    (404, None, (404, "unknown_error")),
])
def test_each_refusal_gets_remove_bgs_status_and_code(status: int, code: str | None,
                                                      expected: tuple[int, str]) -> None:
    answered, body, headers = route.removebg_error(ApiError(status, "why", {"X-Extra": "1"}, code=code), 64)
    assert (answered, body["errors"][0]["code"]) == expected
    assert body["errors"][0]["detail"] == "why" and headers == {"X-Extra": "1"}


def test_a_full_queue_is_remove_bgs_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route.time, "time", lambda: 1000.7)
    full = ApiError(503, "busy", {"Retry-After": "3"}, reason="queue_full")
    status, body, headers = route.removebg_error(full, 64)
    assert (status, body["errors"][0]["code"]) == (429, "rate_limit_exceeded")
    assert headers == {"Retry-After": "3", "X-RateLimit-Limit": "64", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": "1003"}
    status, _, headers = route.removebg_error(ApiError(503, "busy", reason="queue_full"), 8)
    assert status == 429 and headers["Retry-After"] == "1" and headers["X-RateLimit-Reset"] == "1001"
    timed_out = ApiError(503, "took too long", {"Retry-After": "1"}, reason="timeout")
    assert route.removebg_error(timed_out, 8)[0] == 503  # only a full queue is a rate limit


def test_a_validation_error_names_its_first_field() -> None:
    def first(*errors: dict) -> str:
        return route._first_problem(RequestValidationError(list(errors)))

    assert first({"loc": ("body", "size"), "msg": "Field required"}, {"loc": ("body", "crop"), "msg": "x"}) == \
        "size: Field required"
    assert first({"loc": ("query", "a", 0), "msg": "bad"}) == "a.0: bad"
    assert first({"loc": ("header",), "msg": "missing"}) == "request: missing"
    assert first({"loc": ("body", "roi")}) == "roi: invalid"
    assert first({"msg": "odd"}) == "request: odd"
    assert first() == "invalid request"


def test_a_base64_photo_may_be_wrapped_and_a_bad_one_is_remove_bgs_error() -> None:
    data = b"\x89PNG some bytes"
    text = base64.b64encode(data).decode()
    assert route._from_base64(f" {text[:8]}\n{text[8:]} ") == data
    for bad in ("not base64!", "abc", "aGk=!"):  # not even a stray character is dropped
        with pytest.raises(RemoveBgError) as info:
            route._from_base64(bad)
        assert (info.value.code, info.value.detail) == ("failed_to_read_image", "image_file_b64 is not valid base64")


def test_a_photo_over_the_answers_size_is_shrunk_to_it_keeping_its_shape() -> None:
    photo = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    kept = route._fit(png_bytes(photo), 120_000, 10**8)
    assert (kept.width, kept.height) == (400, 300) and np.array_equal(kept.rgb, photo)  # fits exactly: as it is
    shrunk = route._fit(png_bytes(photo), 30_000, 10**8)
    assert (shrunk.width, shrunk.height) == (200, 150) and shrunk.rgb.shape == (150, 200, 3)
    assert shrunk.format == kept.format == "PNG"
    odd = route._fit(jpeg_bytes(photo), 10_001, 10**8)  # JPEG: a reduced DCT scale, then the exact size
    assert odd.width * odd.height <= 10_001 and (odd.width, odd.height) == (115, 86)
    tiny = route._fit(png_bytes(photo[:, :1]), 10, 10**8)  # never a side of 0
    assert (tiny.width, tiny.height) == (1, 54)  # floor(0.18) would be 0 wide
    flat = route._fit(png_bytes(photo[:1]), 10, 10**8)
    assert (flat.width, flat.height) == (63, 1)
    with pytest.raises(ApiError) as info:
        route._fit(png_bytes(photo), 30_000, 1000)
    assert info.value.status_code == 413


def result(foreground: Box, crop: Box | None):  # noqa: ANN201 - a SegmentResult's two fields the box needs
    from types import SimpleNamespace

    return SimpleNamespace(foreground=foreground, crop=crop)


def test_the_pets_box_is_given_in_the_answers_pixels() -> None:
    assert route._foreground(result(Box(10, 20, 30, 40), None)) == Box(10, 20, 30, 40)
    assert route._foreground(result(Box(10, 20, 30, 40), Box(5, 15, 100, 100))) == Box(5, 5, 30, 40)
    # a crop that cuts into the pet (remove.bg's roi): the box is clipped to it on every side
    assert route._foreground(result(Box(10, 20, 30, 40), Box(15, 30, 20, 25))) == Box(0, 0, 20, 25)
    assert route._foreground(result(Box(0, 0, 0, 0), Box(5, 5, 10, 10))) == Box(0, 0, 0, 0)
    assert route._foreground(result(Box(10, 10, 5, 5), Box(50, 50, 10, 10))) == Box(0, 0, 0, 0)
