"""The API docs pages reference only the service's own URLs, and the service serves every asset they name.

The real-browser check (every other host blocked) is tests/app_ui/test_docs_offline.py; this one needs no
browser.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.routes.docs import ASSETS_URL

ABSOLUTE_URL = re.compile(r"(?i)\b(?:https?:)?//[a-z0-9.-]+")


class _References(HTMLParser):
    """Every URL a page makes the browser load: src and href attributes, <redoc spec-url>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.urls


@pytest.fixture(scope="module")
def docs_client(tiny_checkpoint) -> Iterator[TestClient]:  # noqa: ANN001
    """No lifespan: the docs do not need the model."""
    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", _env_file=None)
    yield TestClient(create_app(settings))


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_page_references_only_local_urls(docs_client: TestClient, path: str) -> None:
    response = docs_client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = references(response.text)
    assert urls, "the page loads no assets: the parser missed them"
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    # Nor in inline script (Swagger UI's configuration): no scheme-qualified or protocol-relative URL.
    assert ABSOLUTE_URL.findall(response.text) == []


@pytest.mark.parametrize(("path", "needs"), [
    ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
    ("/redoc", {"redoc.standalone.js", "favicon.png"}),
])
def test_docs_assets_are_served_by_the_service(docs_client: TestClient, path: str, needs: set[str]) -> None:
    urls = [url for url in references(docs_client.get(path).text) if url.startswith(ASSETS_URL + "/")]
    assert {url.rsplit("/", 1)[1] for url in urls} == needs
    for url in urls:
        asset = docs_client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url  # the real bundle, not an empty placeholder
    assert "/openapi.json" in docs_client.get(path).text


def test_swagger_ui_online_validator_is_off(docs_client: TestClient) -> None:
    """With a validator URL, Swagger UI sends the schema's address to validator.swagger.io for a badge."""
    assert '"validatorUrl": null' in docs_client.get("/docs").text


def test_redoc_does_not_load_google_fonts(docs_client: TestClient) -> None:
    assert "fonts.googleapis.com" not in docs_client.get("/redoc").text


def test_favicon_ico_is_served(docs_client: TestClient) -> None:
    response = docs_client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_swagger_oauth2_redirect_page_is_served(docs_client: TestClient) -> None:
    response = docs_client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "oauth2" in response.text.lower()


def test_docs_assets_are_not_in_the_api_schema(docs_client: TestClient) -> None:
    paths = docs_client.get("/openapi.json").json()["paths"]
    assert not any(path.startswith(("/docs", "/redoc", "/favicon")) for path in paths)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_forbid_the_browser_any_other_origin(docs_client: TestClient, path: str) -> None:
    """ReDoc's bundle still asks for its maker's logo from a CDN; the policy keeps the browser from asking."""
    policy = docs_client.get(path).headers["content-security-policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert directives["default-src"] == ["'self'"]
    for name, sources in directives.items():
        assert all(source.startswith("'") or source.endswith(":") for source in sources), (name, sources)
