"""The API docs, served whole by the service: /docs (Swagger UI), /redoc (ReDoc), their JavaScript, CSS and
icon.

FastAPI's own pages load Swagger UI and ReDoc from public CDNs (and ReDoc's fonts from Google), so on a host
without internet they are blank pages, and every visitor's browser calls third parties. The same bundles are
shipped, pinned, by the ``fastapi-offline`` package (MIT; Swagger UI is Apache-2.0, ReDoc MIT); this module
serves them from its package folder and renders FastAPI's page templates pointing at them. Swagger UI's online
validator badge (which would send the schema's URL to validator.swagger.io) is switched off. ReDoc 2 still
shows its maker's logo from cdn.redoc.ly, with no option to drop it, so the pages carry a
Content-Security-Policy that lets the browser load nothing from anywhere but the service (the logo's <img>
then hides itself).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_DIR", "ASSETS_URL", "DOCS_CSP", "DOCS_URL", "REDOC_URL", "install_docs"]

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# Swagger UI's defaults plus no validator: validatorUrl null keeps the badge (a third-party request) away.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
# Same origin only. Inline script: Swagger UI's configuration; inline styles: both UIs set style attributes;
# data: images: Swagger UI's icons; blob: workers: ReDoc's search index.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "frame-ancestors 'self'; base-uri 'self'; form-action 'self'")


def _same_origin_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def install_docs(app: FastAPI) -> None:
    """Add /docs, /redoc, the assets under ``ASSETS_URL`` and /favicon.ico to an app built with
    ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages switched off)."""
    if not (ASSETS_DIR / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"the API docs' assets are missing from {ASSETS_DIR}: reinstall fastapi-offline")
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    title = app.title

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"

    def schema_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{app.openapi_url}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _same_origin_only(get_swagger_ui_html(
            openapi_url=schema_url(request), title=f"{title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL, swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS))

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return _same_origin_only(get_redoc_html(
            openapi_url=schema_url(request), title=f"{title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        """Browsers ask for it on every page; a 404 in every access log otherwise."""
        return FileResponse(ASSETS_DIR / "favicon.png", media_type="image/png")
