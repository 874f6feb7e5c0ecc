"""Domain errors the service raises, and the one place that maps them to HTTP answers."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app import metrics

__all__ = ["ApiError", "count_refusal", "install_error_handlers"]


class ApiError(Exception):
    """An error a client caused or must react to: HTTP status, a message, optional headers, and for the
    service's own refusals (overload, not ready) the ``reason`` label of ``petseg_rejected_total``."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None, *,
                 reason: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}
        self.reason = reason


def count_refusal(exc: ApiError) -> None:
    """One more ``petseg_rejected_total{reason}`` for a refusal that is answered (once per request)."""
    if exc.reason:
        metrics.REJECTED.labels(exc.reason).inc()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        count_refusal(exc)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
