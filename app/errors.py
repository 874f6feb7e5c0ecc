"""Domain errors the service raises, and the one place that maps them to HTTP answers."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from app import metrics

__all__ = ["ApiError", "count_refusal", "install_error_handlers"]


class ApiError(Exception):
    """An error a client caused or must react to: HTTP status, a message, optional headers, for the service's
    own refusals (overload, not ready) the ``reason`` label of ``petseg_rejected_total``, and where one applies
    the machine-readable ``code`` that remove.bg's envelope carries (``/segment`` answers the message alone)."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None, *,
                 reason: str | None = None, code: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}
        self.reason = reason
        self.code = code


def count_refusal(exc: ApiError) -> None:
    """One more ``petseg_rejected_total{reason}`` for a refusal that is answered (once per request)."""
    if exc.reason:
        metrics.REJECTED.labels(exc.reason).inc()


REMOVEBG_PREFIX = "/v1.0/"  # remove.bg's paths: errors in its envelope


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        count_refusal(exc)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        """Starlette's own 404 / 405; under remove.bg's /v1.0/ in remove.bg's envelope, as its clients parse."""
        if not request.url.path.startswith(REMOVEBG_PREFIX):
            return await http_exception_handler(request, exc)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"errors": [{"title": str(exc.detail), "code": code,
                            "detail": f"{request.method} {request.url.path}: {exc.detail}"}]}
        return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))
