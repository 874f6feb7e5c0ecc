"""The running service over HTTP: images/s and latency at several concurrencies, with the server's peak memory."""
from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.common import (
    RequestSpec,
    Server,
    drive,
    drive_repeated,
    encode_image,
    make_checkpoint,
    percentile_ms,
    running_server,
    synthetic_photo,
)
from bench.results import CALIBRATION_PHOTOS, PHOTO_SIZES, SMALL_PHOTO, Budget, ServiceCell, ServiceResult
from models.checkpoint import Checkpoint, save_checkpoint
from models.engine.selection import installed_runtimes


def make_photos() -> dict[str, bytes]:
    return {label: encode_image(synthetic_photo(w, h, seed=i), "JPEG", 90)
            for i, (label, (w, h)) in enumerate(PHOTO_SIZES.items())}


def _photo_request(label: str, jpeg: bytes) -> RequestSpec:
    return RequestSpec(f"photo {label}", files={"image": (f"{label}.jpg", jpeg, "image/jpeg")},
                       headers={"Accept": "image/png"})


def _service_cell(server: Server, label: str, jpeg: bytes, concurrency: int, budget: Budget, max_batch: int
                  ) -> ServiceCell:
    spec = _photo_request(label, jpeg)
    server_cpu, client_cpu = server.cpu_s(), time.process_time()
    outcomes, wall = asyncio.run(drive_repeated(server.url, spec, concurrency=concurrency,
                                                max_requests=budget.service_requests,
                                                max_seconds=budget.service_max_s))
    client_cpu = time.process_time() - client_cpu
    server_end = server.cpu_s()
    good = [o.latency_s for o in outcomes if o.correct]
    per_request = 1000.0 / max(len(outcomes), 1)
    return ServiceCell(label, round(len(jpeg) / 1024, 1), concurrency, len(outcomes),
                       sum(not o.correct for o in outcomes), len(good) / wall if wall else 0.0,
                       percentile_ms(good, 50), percentile_ms(good, 95), percentile_ms(good, 99),
                       server.peak_rss_mb(), max_batch,
                       (server_end - server_cpu) * per_request if server_cpu is not None and server_end else None,
                       client_cpu * per_request)


def _warm_service(server: Server, photos: dict[str, bytes]) -> None:
    """Two sequential requests per photo size, so first-call costs (allocations, lazy imports) are not
    measured."""
    for label, jpeg in photos.items():
        spec = _photo_request(label, jpeg)
        outcomes, _ = asyncio.run(drive(server.url, lambda _, s=spec: s, concurrency=1, max_requests=2,
                                        max_seconds=60))
        failed = [o for o in outcomes if not o.correct]
        if failed:
            raise RuntimeError(f"warm-up request failed: {failed[0]} (server log: {server.log_path})")


def _served_model(server: Server) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/model", timeout=10).json())


def bench_service(arch: str, size: int, device: torch.device, photos: dict[str, bytes],
                  budget: Budget) -> ServiceResult:
    """Every photo at every concurrency with the service's defaults; then the small photo at concurrency >= 4
    with micro-batching switched the other way (on where the default is off, off where it is on), so the run
    shows whether the default is the right one on this machine."""
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        path, checkpoint = make_checkpoint(Path(tmp), arch, size)
        path = _with_int8_ranges(path, checkpoint)
        with running_server(path, Path(tmp), device=str(device), env=dict(budget.service_env)) as server:
            served = _served_model(server)
            result = ServiceResult(server.startup_s, server.rss_mb(), None, served.get("runtime", "torch"),
                                   served.get("precision") or served.get("dtype", ""))
            default_batch = int(served["max_batch"])
            _warm_service(server, photos)
            for label, jpeg in photos.items():
                for concurrency in budget.concurrency:
                    result.cells.append(_service_cell(server, label, jpeg, concurrency, budget, default_batch))
            result.peak_rss_mb = server.peak_rss_mb()
        other_batch = budget.engine_batch if default_batch == 1 else 1
        env = {**dict(budget.service_env), "PETSEG_MAX_BATCH": str(other_batch),
               "PETSEG_BATCH_WAIT_MS": str(budget.batch_wait_ms)}
        small = {SMALL_PHOTO: photos[SMALL_PHOTO]}
        with running_server(path, Path(tmp), device=str(device), env=env) as server:
            _warm_service(server, small)
            for concurrency in (c for c in budget.concurrency if c >= 4):
                result.cells.append(_service_cell(server, SMALL_PHOTO, photos[SMALL_PHOTO], concurrency, budget,
                                                  other_batch))
    return result


def _with_int8_ranges(path: Path, checkpoint: Checkpoint) -> Path:
    """The checkpoint with int8 activation ranges stored in it, as the embedded model has them, so the service
    picks the engine it picks for the embedded model (int8 where ``auto`` says so). Measured on synthetic photos:
    the speed does not depend on them. Unchanged where ONNX Runtime is not installed."""
    if not {"onnxruntime", "openvino"} & installed_runtimes():
        return path
    from models.engine.quantize import measure_ranges

    with tempfile.TemporaryDirectory(prefix="petseg-bench-photos-") as tmp:
        photos = []
        for seed in range(CALIBRATION_PHOTOS):
            photos.append(Path(tmp) / f"photo_{seed}.jpg")
            photos[-1].write_bytes(encode_image(synthetic_photo(500, 375, seed=seed)))
        checkpoint.int8_calibration = measure_ranges(checkpoint, photos).to_dict()
    return save_checkpoint(checkpoint, path)


