"""The ASGI app: ``uvicorn app.main:app``. ``create_app(settings)`` builds one for tests with their own settings."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from app import metrics
from app.config import Settings, SettingsError, load_settings
from app.errors import install_error_handlers
from app.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestLogMiddleware, StartupErrorMiddleware
from app.photo_source import url_fetcher_for
from app.routes import health, removebg, segment
from app.routes.docs import install_docs
from app.service import SegmentationService
from models.checkpoint import CheckpointError

__all__ = ["app", "create_app"]

log = logging.getLogger("app")
STATIC = Path(__file__).resolve().parent / "static"
DESCRIPTION = """Binary pet/background segmentation (Oxford-IIIT Pet) with UNet / ResNet34-UNet.

`POST /segment` with a multipart `image` returns JSON with a base64 mask PNG, the foreground probability and,
when a `ground_truth` mask is uploaded, the Dice score. Send `Accept: image/png` to get the PNG itself.
"""


def _load_service(settings: Settings) -> SegmentationService:
    path = Path(settings.checkpoint)
    if settings.checkpoints is None and not path.is_file():  # PETSEG_CHECKPOINTS: the service names the model
        hint = " (the embedded default model is missing: reinstall, or set PETSEG_CHECKPOINT)" if \
            path.name == "default.pt" else " (check PETSEG_CHECKPOINT)"
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    return SegmentationService.load(settings)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    state.ready, state.status = False, "loading model"
    if state.settings is None:
        raise RuntimeError(state.startup_error)
    settings: Settings = state.settings
    try:
        service = await run_in_threadpool(_load_service, settings)
    except (CheckpointError, ValueError, OSError) as exc:
        state.startup_error = str(exc)
        log.error("cannot start: %s", exc)
        raise
    state.service = service
    state.status = "warming up"
    try:
        await run_in_threadpool(service.warmup)
    except Exception as exc:  # e.g. out of device memory: report it in one line and release the model thread
        state.startup_error = f"warm-up failed: {exc}"
        log.error("cannot start: warm-up failed: %s", exc)
        state.service = None
        await run_in_threadpool(service.close)
        raise
    for served in service.models:
        info = served.segmenter.info
        metrics.set_model_info(served.name, info.arch, info.device, info.precision, info.checkpoint_sha256 or "")
        log.info("serving %s%s: %s (epoch %d, %d parameters) on %s, runtime %s, precision %s%s, from %s",
                 served.name, " (default)" if served.is_default and len(service.models) > 1 else "", info.arch,
                 info.epoch, info.parameters, info.device, info.runtime, info.precision,
                 ", compiled" if info.compiled else "", info.checkpoint_path)
    state.ready, state.status = True, "ready"
    try:
        yield
    finally:
        state.ready, state.status = False, "shutting down"
        await run_in_threadpool(service.close)
        state.service = None


def keep_uploads_in_memory(max_upload_bytes: int) -> None:
    """Starlette spools an uploaded file over 1 MB to a temporary file on disk; the service reads every upload
    into memory right after, so a phone photo was written out and read back for nothing (~1.5 ms and 3 ms of CPU
    for a 2.2 MB JPEG). Bodies over ``max_upload_bytes`` are refused before parsing, so every part fits."""
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_upload_bytes)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Without ``settings`` they are read from ``PETSEG_*``; invalid ones fail start-up."""
    startup_error: str | None = None
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            startup_error = str(exc)
    # docs_url/redoc_url None: FastAPI's pages load their assets from CDNs; install_docs serves them locally.
    app = FastAPI(title="petseg", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.settings = settings
    if settings is not None:
        keep_uploads_in_memory(settings.max_upload_bytes)
        app.state.url_fetcher = url_fetcher_for(settings)
    app.state.startup_error = startup_error
    app.state.ready, app.state.status, app.state.service = False, "starting", None
    install_error_handlers(app)
    app.include_router(segment.router)
    app.include_router(health.router)
    app.include_router(removebg.router)
    install_docs(app)

    @app.get("/", include_in_schema=False, response_model=None)
    async def index() -> Response:
        page = STATIC / "index.html"
        return FileResponse(page) if page.is_file() else RedirectResponse("/docs")

    # Added last = outermost: start-up summary, access log, CORS (so even a 401 carries its headers), API key,
    # then the body limit closest to the app.
    if settings is not None:
        app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
        if settings.cors_origins:
            app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                               allow_headers=["*"], expose_headers=["X-Foreground-Probability",
                                                                    "X-Foreground-Fraction", "X-Dice"])
    app.add_middleware(RequestLogMiddleware)
    app.add_middleware(StartupErrorMiddleware, get_reason=lambda: app.state.startup_error)
    return app


app = create_app()
