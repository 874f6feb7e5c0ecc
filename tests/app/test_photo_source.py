"""Where a request's photo comes from, on its own: the upload or the image_url, exactly one, and the fetcher's
policy taken from the settings."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import pytest
from fastapi import UploadFile
from fastapi.exceptions import RequestValidationError

from app.config import load_settings
from app.errors import ApiError
from app.photo_source import field_error, photo_bytes, url_fetcher_for
from app.url_fetch import UrlPolicy


class FakeFetcher:
    def __init__(self) -> None:
        self.urls: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.urls.append(url)
        return b"fetched"


def request_with(allow_urls: bool) -> tuple[SimpleNamespace, FakeFetcher]:
    fetcher = FakeFetcher()
    state = SimpleNamespace(settings=load_settings(allow_urls=allow_urls), url_fetcher=fetcher)
    return SimpleNamespace(app=SimpleNamespace(state=state)), fetcher


def upload(data: bytes = b"uploaded") -> UploadFile:
    return UploadFile(io.BytesIO(data), filename="cat.jpg")


def test_the_fetcher_policy_comes_from_the_settings() -> None:
    settings = load_settings(url_allow_hosts=["Photos.Example"], max_upload_bytes=1234,
                             url_connect_timeout_s=1.5, url_read_timeout_s=2.5, request_timeout_s=7.0)
    expected = UrlPolicy(allow_hosts=frozenset({"photos.example"}), max_bytes=1234, connect_timeout_s=1.5,
                         read_timeout_s=2.5, total_timeout_s=7.0)
    assert url_fetcher_for(settings).policy == expected


def test_an_upload_is_read() -> None:
    request, fetcher = request_with(allow_urls=True)
    assert asyncio.run(photo_bytes(request, upload(), None)) == b"uploaded"
    assert asyncio.run(photo_bytes(request, upload(), "   ")) == b"uploaded"  # a blank form field is no URL
    assert fetcher.urls == []


def test_a_url_is_fetched_trimmed() -> None:
    request, fetcher = request_with(allow_urls=True)
    assert asyncio.run(photo_bytes(request, None, "  https://photos.example/cat.jpg ")) == b"fetched"
    assert fetcher.urls == ["https://photos.example/cat.jpg"]


def test_a_url_while_urls_are_off_is_a_403_that_says_what_to_do() -> None:
    request, fetcher = request_with(allow_urls=False)
    with pytest.raises(ApiError) as error:
        asyncio.run(photo_bytes(request, None, "https://photos.example/cat.jpg"))
    assert error.value.status_code == 403 and fetcher.urls == []
    assert error.value.detail == ("image_url is switched off on this service (PETSEG_ALLOW_URLS); upload the "
                                  "file instead")


@pytest.mark.parametrize(("image", "url", "expected"), [
    (True, "https://photos.example/cat.jpg",
     {"type": "value_error", "loc": ("body", "image_url"),
      "msg": "send the photo as image or as image_url, not both", "input": None}),
    (False, None,
     {"type": "missing", "loc": ("body", "image"),
      "msg": "send the photo as image (a file upload) or as image_url", "input": None}),
    (False, " ",
     {"type": "missing", "loc": ("body", "image"),
      "msg": "send the photo as image (a file upload) or as image_url", "input": None}),
])
def test_exactly_one_source_or_a_422_in_fastapis_shape(image: bool, url: str | None, expected: dict) -> None:
    request, fetcher = request_with(allow_urls=True)
    with pytest.raises(RequestValidationError) as error:
        asyncio.run(photo_bytes(request, upload() if image else None, url))
    assert list(error.value.errors()) == [expected] and fetcher.urls == []


def test_field_error_is_one_error_at_the_fields_place_in_the_body() -> None:
    assert list(field_error("background", "value_error", "bad").errors()) == [
        {"type": "value_error", "loc": ("body", "background"), "msg": "bad", "input": None}]
