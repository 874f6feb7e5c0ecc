"""The exported model on ONNX Runtime and OpenVINO, fp32 and int8, each built and timed in a fresh process."""
from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path

import torch

from bench.common import encode_image, synthetic_photo
from bench.model_speed import time_engine
from bench.results import CALIBRATION_PHOTOS, EXPORTED_PATHS, Budget, Timing
from bench.timing import in_fresh_process_thread, step
from models.checkpoint import Checkpoint
from models.engine.export_cache import CACHE_ENV
from models.engine.selection import installed_runtimes


def bench_runtimes(checkpoint: Checkpoint, device: torch.device, budget: Budget) -> list[Timing]:
    """The checkpoint exported to ONNX, on each installed runtime in fp32 and int8: batch 1 on all the cores, built
    and timed on a fresh thread of a fresh process (the first exports into a cache folder of this run's, the others
    read it). CPU only: these runtimes run on the CPU in this version."""
    if device.type != "cpu":
        return []
    installed = installed_runtimes()
    paths = [(runtime, precision) for runtime, precision in EXPORTED_PATHS if runtime in installed]
    if not paths:
        print("  runtimes: neither onnxruntime nor openvino is installed (pip install 'petseg[onnx]')",
              file=sys.stderr)
        return []
    with tempfile.TemporaryDirectory(prefix="petseg-bench-onnx-") as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for seed in range(CALIBRATION_PHOTOS):
            (photos / f"photo_{seed}.jpg").write_bytes(encode_image(synthetic_photo(500, 375, seed=seed)))
        previous = os.environ.get(CACHE_ENV)
        os.environ[CACHE_ENV] = str(Path(tmp) / "cache")  # inherited by the spawned processes
        try:
            return [step(f"{runtime} {precision}", functools.partial(
                in_fresh_process_thread, _build_and_time_exported, checkpoint, runtime, precision, str(photos),
                budget)) for runtime, precision in paths]
        finally:
            if previous is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = previous


def _build_and_time_exported(checkpoint: Checkpoint, runtime: str, precision: str, photos: str,
                             budget: Budget) -> Timing:
    """Build (export, quantise or read from the cache), warm and time one exported engine at batch 1."""
    from models.engine.exported import ExportedSegmenter

    engine = ExportedSegmenter(checkpoint, runtime=runtime, precision=precision, calibration=photos)
    engine.warmup((1,))
    return time_engine(engine, 1, budget)


