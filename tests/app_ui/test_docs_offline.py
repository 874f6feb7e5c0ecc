"""The API docs in a real browser with every host but the service blocked: they must render from its own
assets.

FastAPI's default pages load Swagger UI and ReDoc from CDNs; on a host without internet they were blank. Here
the page's every request goes through a route handler that lets through only the service's own origin (and
inline data: / blob: URLs) and records everything else, so a single third-party request fails the test.
Requests the pages' Content-Security-Policy stops inside the browser never reach the handler; Chromium reports
each on the console, and the tests accept such a refusal only for an off-site URL (ReDoc's logo), never for
the service's own.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.app_ui.test_browser import ARTIFACTS, browser  # noqa: F401  (browser: the Chromium fixture)
from tests.server import running_server

pytestmark = pytest.mark.slow
CSP_REFUSAL = re.compile(r"'(?P<url>[^']+)' violates the following Content Security Policy")


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with running_server(tiny_checkpoint) as url:
        yield url


class OffsiteGuard:
    """A Playwright route handler: the service's origin passes, any other request is aborted and recorded."""

    def __init__(self, origin: str) -> None:
        self.origin = urlsplit(origin).netloc
        self.blocked: list[str] = []
        self.served: list[str] = []
        self.refused_by_csp: list[str] = []

    def is_local(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("data", "blob") or (parts.scheme == "http" and parts.netloc == self.origin)

    def __call__(self, route) -> None:  # noqa: ANN001
        if self.is_local(route.request.url):
            self.served.append(route.request.url)
            route.continue_()
            return
        self.blocked.append(route.request.url)
        route.abort("blockedbyclient")


@pytest.fixture
def guarded_page(browser, server: str) -> Iterator[tuple[object, OffsiteGuard]]:  # noqa: F811
    page = browser.new_page()
    page.set_default_timeout(30_000)
    guard = OffsiteGuard(server)
    page.route("**/*", guard)
    failures: list[str] = []
    page.on("pageerror", lambda exc: failures.append(f"JavaScript error: {exc}"))

    def on_console(message) -> None:  # noqa: ANN001
        if message.type != "error":
            return
        refusal = CSP_REFUSAL.search(message.text)
        if refusal and not guard.is_local(refusal["url"]):
            guard.refused_by_csp.append(refusal["url"])
        else:
            failures.append(f"console error: {message.text}")

    page.on("console", on_console)
    page.on("response", lambda response: failures.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)
    yield page, guard
    page.close()
    assert not guard.blocked, f"the page tried to reach other hosts: {guard.blocked}"
    assert not failures, failures


def test_swagger_ui_lists_post_segment_offline(guarded_page, server: str) -> None:
    page, guard = guarded_page
    page.goto(server + "/docs")
    operation = page.wait_for_selector(".opblock-post .opblock-summary-path[data-path='/segment']")
    assert operation.text_content().strip() == "/segment"
    block = page.locator(".opblock-post", has=page.locator("[data-path='/segment']"))
    assert block.locator(".opblock-summary-method").text_content().strip() == "POST"
    loaded = {urlsplit(url).path for url in guard.served}
    assert {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/openapi.json"} <= loaded
    assert guard.refused_by_csp == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs-offline.png"))


def test_redoc_renders_offline(guarded_page, server: str) -> None:
    page, guard = guarded_page
    page.goto(server + "/redoc")
    page.wait_for_selector("h2:has-text('Segment the pet in an image')")
    # The operation's panel shows its method and path.
    page.wait_for_selector(".http-verb.post")
    assert "/segment" in page.inner_text("redoc")
    loaded = {urlsplit(url).path for url in guard.served}
    assert {"/docs-assets/redoc.standalone.js", "/openapi.json"} <= loaded
    # ReDoc 2 always shows its maker's logo from a CDN; the page's CSP stops it in the browser.
    assert guard.refused_by_csp == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "redoc-offline.png"))


def test_guard_blocks_a_cdn_page(browser, server: str) -> None:  # noqa: F811
    """The guard itself: FastAPI's default page (assets on a CDN) leaves Swagger UI unloaded and the CDN
    request recorded, so the tests above would catch a page that still reached out. The route serves the
    page."""
    page = browser.new_page()
    guard = OffsiteGuard(server)
    page.route("**/*", guard)
    cdn_script = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
    cdn_page = (f"<html><head><script src='{cdn_script}'></script></head>"
                "<body><div id='swagger-ui'></div></body></html>")
    try:
        page.route(server + "/cdn-docs", lambda route: route.fulfill(body=cdn_page, content_type="text/html"))
        page.goto(server + "/cdn-docs")
        assert page.evaluate("typeof window.SwaggerUIBundle") == "undefined"
        assert guard.blocked == [cdn_script]
    finally:
        page.close()
