"""Dependencies routes take as typed parameters."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import ApiError
from app.service import SegmentationService

__all__ = ["ServiceDep"]


def get_service(request: Request) -> SegmentationService:
    service = getattr(request.app.state, "service", None)
    if service is None or not request.app.state.ready:
        raise ApiError(503, "the model is not loaded yet; retry shortly", {"Retry-After": "2"}, reason="not_ready")
    return service


ServiceDep = Annotated[SegmentationService, Depends(get_service)]
