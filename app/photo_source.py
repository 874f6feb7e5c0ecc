"""Where a request's photo comes from: an uploaded file or, when the service allows it, an ``image_url``."""
from __future__ import annotations

from fastapi import Request, UploadFile
from fastapi.exceptions import RequestValidationError

from app.config import Settings
from app.errors import ApiError
from app.url_fetch import UrlFetcher, UrlPolicy

__all__ = ["fetch_image_url", "field_error", "photo_bytes", "url_fetcher_for"]


def url_fetcher_for(settings: Settings) -> UrlFetcher:
    """The app's fetcher (``app.state.url_fetcher``): tests swap its resolver and transport."""
    return UrlFetcher(UrlPolicy(
        allow_hosts=frozenset(settings.url_allow_hosts), max_bytes=settings.max_upload_bytes,
        connect_timeout_s=settings.url_connect_timeout_s, read_timeout_s=settings.url_read_timeout_s,
        total_timeout_s=settings.request_timeout_s))


async def fetch_image_url(request: Request, url: str) -> bytes:
    """The photo at ``url``: 403 while PETSEG_ALLOW_URLS is off, else whatever :class:`UrlFetcher` decides."""
    settings: Settings = request.app.state.settings
    if not settings.allow_urls:
        raise ApiError(403, "image_url is switched off on this service (PETSEG_ALLOW_URLS); upload the file "
                            "instead")
    fetcher: UrlFetcher = request.app.state.url_fetcher
    return await fetcher.fetch(url)


def field_error(field: str, kind: str, message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape (``detail: [{loc, msg, type}]``), like every other bad form field."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message, "input": None}])


async def photo_bytes(request: Request, image: UploadFile | None, image_url: str | None) -> bytes:
    """The uploaded ``image`` or the photo at ``image_url``: exactly one of them (422 otherwise)."""
    url = (image_url or "").strip()
    if image is not None and url:
        raise field_error("image_url", "value_error", "send the photo as image or as image_url, not both")
    if image is not None:
        return await image.read()
    if not url:
        raise field_error("image", "missing", "send the photo as image (a file upload) or as image_url")
    return await fetch_image_url(request, url)
