"""The engine on an exported ONNX model: ONNX Runtime or OpenVINO behind the same interface as the PyTorch one.

The model is exported from the checkpoint at start-up (``models.engine.onnx_export``) and, for int8, quantised
(``models.engine.quantize``); both are cached by the checkpoint's sha256 (``models.engine.export_cache``), so only the first
start pays for them. ``forward`` takes the (B, 3, S, S) uint8 batches that ``preprocess`` makes (or normalised
float batches) and returns (B, S, S) probabilities, like :class:`models.engine.segmenter.Segmenter`.

Threads: the service's model lanes set each pass's thread count on the calling thread
(``models.engine.runtime.use_intra_op_threads``);
these runtimes fix theirs when a session (ONNX Runtime) or compiled model (OpenVINO) is built, so one is built per
thread count asked for, during warm-up, and each pass uses the one for its count.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import Checkpoint, file_sha256
from models.engine.export_cache import cached_file
from models.engine.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    build_onnx,
    folded_fp32_model,
    normalise_pixels,
    save_onnx,
)
from models.engine.runtime import intra_op_threads, usable_cores
from models.engine.segmenter import SegmenterBase, SegmenterInfo, noise_batch

__all__ = ["EXPORTED_RUNTIMES", "ExportedSegmenter", "exported_model"]

log = logging.getLogger(__name__)

EXPORTED_RUNTIMES = ("onnxruntime", "openvino")
EXPORT_VERSION = "v1"  # part of the cache key: change it when the exported graph changes


class ExportedSegmenter(SegmenterBase):
    """A checkpoint served from its ONNX export by ``runtime`` (onnxruntime or openvino) in fp32 or int8."""

    def __init__(self, checkpoint: Checkpoint, *, runtime: str, precision: str = "fp32",
                 checkpoint_path: str | os.PathLike[str] | None = None,
                 calibration: str | os.PathLike[str] | None = None) -> None:
        if runtime not in EXPORTED_RUNTIMES:
            raise ValueError(f"unknown exported runtime {runtime!r}; expected one of {', '.join(EXPORTED_RUNTIMES)}")
        if precision not in ("fp32", "int8"):
            raise ValueError(f"{runtime} runs fp32 or int8, not {precision!r}")
        self.runtime, self.precision = runtime, precision
        self.checkpoint = checkpoint
        self.device = torch.device("cpu")
        self.image_size = checkpoint.image_size
        path = Path(checkpoint_path) if checkpoint_path else None
        sha256 = file_sha256(path) if path else None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None  # only when the cache cannot be written
        started = time.perf_counter()
        model_file = exported_model(checkpoint, sha256 or checkpoint.weights_digest(), precision, calibration,
                                    scratch=self._scratch_dir)
        log.info("%s model ready in %.1fs: %s", precision, time.perf_counter() - started, model_file)
        self._backend: _Backend = (_OnnxRuntime(model_file) if runtime == "onnxruntime"
                                   else _OpenVino(model_file, self.image_size))
        self.info = SegmenterInfo(
            arch=checkpoint.arch, parameters=_folded_parameters(checkpoint), device="cpu", precision=precision,
            compiled=False, image_size=self.image_size, checkpoint_path=str(path) if path else None,
            checkpoint_sha256=sha256, epoch=checkpoint.epoch, metrics=dict(checkpoint.metrics),
            created_at=checkpoint.created_at, card=dict(checkpoint.card), runtime=runtime,
        )

    def _scratch_dir(self) -> Path:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="petseg-onnx-")
        return Path(self._scratch.name)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:
            inputs = normalise_pixels(batch.numpy(), self.checkpoint.mean, self.checkpoint.std)
        else:
            inputs = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        probs = self._backend.run(inputs, intra_op_threads())
        return torch.from_numpy(probs[:, 0])

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> float:
        started = time.perf_counter()
        for size in dict.fromkeys(batch_sizes):
            self.forward(noise_batch((size, 3, self.image_size, self.image_size)))
        elapsed = time.perf_counter() - started
        count = intra_op_threads()
        log.info("warm-up on %s %s (%s, %d thread%s) took %.2fs", self.runtime, self.device, self.precision, count,
                 "s" if count != 1 else "", elapsed)
        return elapsed


def exported_model(checkpoint: Checkpoint, key: str, precision: str,
                   calibration: str | os.PathLike[str] | None, *, scratch: Callable[[], Path]) -> Path:
    """The ONNX file for ``precision``, from the cache or built into it (into ``scratch()`` where the cache cannot
    be written). ``key`` identifies the checkpoint (its sha256)."""
    stem = f"{key[:24]}-{checkpoint.arch}-{EXPORT_VERSION}"

    def export(path: Path) -> None:
        log.info("exporting %s to ONNX (once per checkpoint; tens of seconds on a small CPU)", checkpoint.arch)
        save_onnx(build_onnx(checkpoint, checkpoint_sha256=key), path)

    fp32 = _cached_or_scratch(f"{stem}-fp32.onnx", export, scratch)
    if precision == "fp32":
        return fp32
    from models.engine.quantize import (
        Int8Calibration,
        calibration_configured,
        calibration_digest,
        calibration_photos,
        calibration_source,
        quantize_int8,
    )

    carried = Int8Calibration.from_dict(checkpoint.int8_calibration)
    if carried is not None and not calibration_configured(calibration):
        name = f"{stem}-int8-ranges-{carried.digest[:12]}.onnx"
        return _cached_or_scratch(name, lambda path: quantize_int8(fp32, path, checkpoint, ranges=carried), scratch)
    photos = calibration_photos(calibration_source(calibration))
    name = f"{stem}-int8-{calibration_digest(photos)[:12]}.onnx"
    return _cached_or_scratch(name, lambda path: quantize_int8(fp32, path, checkpoint, photos), scratch)


def _cached_or_scratch(name: str, build: Callable[[Path], Any], scratch: Callable[[], Path]) -> Path:
    path = cached_file(name, build)
    if path is None:
        path = scratch() / name
        build(path)
    return path


def _folded_parameters(checkpoint: Checkpoint) -> int:
    """What the PyTorch engine reports: the parameters of the BatchNorm-folded model."""
    return sum(p.numel() for p in folded_fp32_model(checkpoint).parameters())


class _PerThreadCount:
    """What a runtime builds once per thread count (a session, a compiled model), on first use, under a lock."""

    def __init__(self, build: Callable[[int], Any]) -> None:
        self._build = build
        self._built: dict[int, Any] = {}
        self._lock = threading.Lock()

    def get(self, threads: int) -> Any:
        built = self._built.get(threads)
        if built is None:
            with self._lock:
                built = self._built.get(threads)
                if built is None:
                    built = self._built[threads] = self._build(threads)
        return built


class _Backend:
    def run(self, inputs: np.ndarray, threads: int) -> np.ndarray:
        raise NotImplementedError


class _OnnxRuntime(_Backend):
    """One ``InferenceSession`` per thread count; ``run`` is thread-safe on a session."""

    def __init__(self, model_file: Path) -> None:
        import onnxruntime

        self._ort = onnxruntime
        self._model_file = str(model_file)
        self._sessions = _PerThreadCount(self._session)

    def _session(self, threads: int) -> Any:
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the QDQ model's notices are not news
        return self._ort.InferenceSession(self._model_file, options, providers=["CPUExecutionProvider"])

    def run(self, inputs: np.ndarray, threads: int) -> np.ndarray:
        return self._sessions.get(threads).run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]


class _OpenVino(_Backend):
    """One compiled model per thread count, its spatial size fixed to the model's input size (batch stays dynamic);
    one infer request per calling thread. A thread count below the cores gets as many streams as fit, so passes
    from several lanes run side by side instead of queueing for one stream."""

    def __init__(self, model_file: Path, image_size: int) -> None:
        import openvino

        self._core = openvino.Core()
        self._model = self._core.read_model(str(model_file))
        self._model.reshape({self._model.inputs[0]: openvino.PartialShape([-1, 3, image_size, image_size])})
        self._compiled = _PerThreadCount(self._compile)
        self._requests = threading.local()

    def _compile(self, threads: int) -> Any:
        streams = max(1, usable_cores() // max(1, threads))
        return self._core.compile_model(self._model, "CPU", {
            "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * threads, "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False})

    def run(self, inputs: np.ndarray, threads: int) -> np.ndarray:
        requests: dict[int, Any] = self._requests.__dict__.setdefault("by_threads", {})
        request = requests.get(threads)
        if request is None:
            request = requests[threads] = self._compiled.get(threads).create_infer_request()
        request.infer({0: inputs})
        return request.get_output_tensor(0).data.copy()
