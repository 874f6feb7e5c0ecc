"""Where remove.bg's photo and background come from, without HTTP: a JSON body, one photo source of three, one
background source, a URL's refusal in remove.bg's words; and the form fields' documentation in the schema."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from app.errors import ApiError
from app.removebg import RemoveBgError
from app.routes import removebg as route


class JsonRequest:
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def json(self) -> object:
        return json.loads(self.body)


class Upload:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self) -> bytes:
        return self.data


def refused(call: object) -> RemoveBgError:
    with pytest.raises(RemoveBgError) as info:
        asyncio.run(call)  # type: ignore[arg-type]
    return info.value


def test_a_json_body_is_an_object_of_fields_without_file_uploads() -> None:
    assert asyncio.run(route._json_fields(JsonRequest(b'{"size": "hd"}'))) == {"size": "hd"}
    cases = [(b"{nope", "the JSON body does not parse"), (b"\xff", "the JSON body does not parse"),
             (b"[1, 2]", "the JSON body must be an object of remove.bg's fields")]
    for field in ("image_file", "bg_image_file"):
        cases.append((json.dumps({field: "x"}).encode(), "image_file and bg_image_file are file uploads: send them "
                                                          "as multipart/form-data, or use image_file_b64 / image_url"))
    for body, detail in cases:
        error = refused(route._json_fields(JsonRequest(body)))
        assert (error.code, error.detail) == ("invalid_json", detail), body


def test_one_photo_source_of_three() -> None:
    error = refused(route._photo(None, None, {}))
    assert (error.code, error.detail) == ("missing_source", "no image given: send image_file, image_file_b64 or "
                                                            "image_url")
    error = refused(route._photo(None, Upload(b"jpeg"), {"image_file_b64": "aGk=", "image_url": "http://x/y"}))
    assert (error.code, error.detail) == ("multiple_sources", "send one image source, not image_file and "
                                                              "image_file_b64 and image_url")
    error = refused(route._photo(None, None, {"image_file_b64": "aGk=", "image_url": "http://x/y"}))
    assert error.detail == "send one image source, not image_file_b64 and image_url"
    assert asyncio.run(route._photo(None, Upload(b"jpeg"), {"image_file_b64": ""})) == b"jpeg"
    assert asyncio.run(route._photo(None, None, {"image_file_b64": "aGk="})) == b"hi"


def test_one_background_source_and_none_is_none() -> None:
    error = refused(route._background(None, Upload(b"png"), {"bg_image_url": "http://x/bg.png"}))
    assert (error.code, error.detail) == ("multiple_bg_sources", "bg_image_file: give one background source: "
                                                                 "bg_color, bg_image_url or bg_image_file")
    assert asyncio.run(route._background(None, Upload(b"png"), {})) == b"png"
    assert asyncio.run(route._background(None, None, {"bg_image_url": ""})) is None


@pytest.mark.parametrize(("status", "detail", "code", "expected"), [
    (403, "image_url is switched off on this service", "failed_image_download",
     ("image_url is switched off on this service", "failed_image_download")),  # names its field already
    (400, "image_url: cannot fetch from 'host': refused", "failed_image_download",
     ("image_url: cannot fetch from 'host': refused", "failed_image_download")),
    (413, "image_url: the photo is over 20 MB", "failed_bg_download",
     ("bg_image_url: the photo is over 20 MB", "file_too_large")),
])
def test_a_url_that_fails_is_remove_bgs_400_naming_the_field(monkeypatch: pytest.MonkeyPatch, status: int,
                                                              detail: str, code: str,
                                                              expected: tuple[str, str]) -> None:
    async def failing(request: object, url: str) -> bytes:
        raise ApiError(status, detail)

    monkeypatch.setattr(route, "fetch_image_url", failing)
    field = "bg_image_url" if code == "failed_bg_download" else "image_url"
    with pytest.raises(ApiError) as info:
        asyncio.run(route._download(None, "http://x/y", field, code))
    assert (info.value.status_code, info.value.detail, info.value.code) == (400, *expected)


def test_urls_go_through_the_services_fetcher_with_their_own_field(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list = []

    async def fetch(request: object, url: str) -> bytes:
        fetched.append(url)
        raise ApiError(400, "nope")

    monkeypatch.setattr(route, "fetch_image_url", fetch)
    for call, field in ((route._photo(None, None, {"image_url": "http://x/cat.jpg"}), "image_url"),
                        (route._background(None, None, {"bg_image_url": "http://x/bg.png"}), "bg_image_url")):
        with pytest.raises(ApiError) as info:
            asyncio.run(call)
        assert info.value.detail == f"{field}: nope"
    assert fetched == ["http://x/cat.jpg", "http://x/bg.png"]


def test_the_form_fields_are_documented_with_an_example_where_one_helps() -> None:
    with_example = route._text_field("the size", "auto")
    without = route._text_field("the photo, base64-encoded")
    assert (with_example.description, with_example.examples) == ("the size", ["auto"])
    assert (without.description, without.examples) == ("the photo, base64-encoded", None)


def test_the_error_answer_carries_the_status_body_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(max_queue=5))))
    monkeypatch.setattr(route.time, "time", lambda: 100.0)
    answer = route._errors_response(request, ApiError(503, "busy", {"Retry-After": "2"}, reason="queue_full"))
    assert answer.status_code == 429 and answer.headers["X-RateLimit-Limit"] == "5"
    assert answer.headers["Retry-After"] == "2" and json.loads(answer.body)["errors"][0]["code"] == \
        "rate_limit_exceeded"
