"""Liveness, readiness, model facts and metrics."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app import metrics
from app.deps import ServiceDep
from app.model_set import ServedModel
from app.schemas import HealthResponse, ModelInfo, ModelsResponse, ReadyResponse, ServedModelInfo

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """Alive: the process answers. Says nothing about the model (see /ready)."""
    return HealthResponse(status="ok")


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(request: Request) -> JSONResponse:
    """200 once the model is loaded and warm; 503 while loading or shutting down."""
    state = request.app.state
    if getattr(state, "ready", False):
        return JSONResponse(ReadyResponse(ready=True, detail="model loaded and warm").model_dump())
    detail = getattr(state, "status", "starting")
    metrics.REJECTED.labels("not_ready").inc()
    return JSONResponse(ReadyResponse(ready=False, detail=detail).model_dump(), status_code=503,
                        headers={"Retry-After": "2"})


@router.get("/model", response_model=ModelInfo)
async def model_info(service: ServiceDep) -> ModelInfo:
    """What is being served: architecture, device, precision, checkpoint and its recorded quality."""
    info = service.segmenter.info
    return ModelInfo(
        name=service.models.default_name, arch=info.arch, parameters=info.parameters, device=info.device, dtype=info.precision,
        compiled=info.compiled, input_size=info.image_size, max_batch=service.runner.max_batch,
        model_lanes=service.runner.lanes, runtime=info.runtime, precision=info.precision,
        checkpoint_file=info.checkpoint_path or "", checkpoint_sha256=info.checkpoint_sha256 or "",
        epoch=info.epoch, validation_dice=info.metrics.get("val_dice"), created_at=info.created_at, card=info.card,
    )


@router.get("/models", response_model=ModelsResponse)
async def models(service: ServiceDep) -> ModelsResponse:
    """Every model served (PETSEG_CHECKPOINTS), default first, with the memory its weights take."""
    return ModelsResponse(default=service.models.default_name,
                          models=[_describe(served) for served in service.models])


def _describe(served: ServedModel) -> ServedModelInfo:
    info = served.segmenter.info
    return ServedModelInfo(
        name=served.name, default=served.is_default, arch=info.arch, parameters=info.parameters, device=info.device,
        dtype=info.precision, runtime=info.runtime, input_size=info.image_size,
        weights_bytes=served.weights_bytes,
        checkpoint_sha256=info.checkpoint_sha256 or "", epoch=info.epoch, validation_dice=info.metrics.get("val_dice"))


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format: requests, latency, inference time, batch sizes, queue depth, rejections."""
    service = getattr(request.app.state, "service", None)
    if service is not None:
        metrics.QUEUE_DEPTH.set(service.runner.depth)
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)
