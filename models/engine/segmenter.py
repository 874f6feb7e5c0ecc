"""The inference engine shared by the service, ``predict`` and ``evaluate``: the interface every runtime offers
(:class:`SegmenterBase`) and its PyTorch implementation (:class:`Segmenter`; ONNX Runtime and OpenVINO are in
``models.engine.exported``, and ``models.engine.selection.open_segmenter`` picks one).

The PyTorch engine owns one model on one device and picks the fastest correct path for it: BatchNorm folded into
the convolutions, weights held in bf16 where the hardware computes bf16 natively (CUDA, or CPUs with
AVX512_BF16/AMX), channels_last, ``inference_mode``, cudnn benchmark, and optionally ``torch.compile`` (inductor
with freezing: ReLU fused into the oneDNN convolutions, weights pre-packed). Images go in as HxWx3 uint8 RGB
arrays of any size; probability maps come out at the size asked for.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from models.checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint
from models.engine.fusion import fold_batchnorm
from models.engine.runtime import (
    dtype_of,
    keep_freed_memory,
    resolve_compile,
    resolve_device,
    resolve_precision,
)
from models.imaging.blobs import drop_small_blobs

__all__ = ["Segmenter", "SegmenterBase", "SegmenterInfo", "load_for_inference", "noise_batch",
           "resize_for_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmenterInfo:
    arch: str
    parameters: int
    device: str
    precision: str
    compiled: bool
    image_size: int
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    epoch: int
    metrics: dict[str, float]
    created_at: str
    card: dict[str, object]
    runtime: str = "torch"


def resize_for_model(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> size x size x 3, as training resizes (INTER_AREA); anything else is a ValueError.

    A photo at least four times the model's side is first halved (means of 2x2 blocks, an odd last row or
    column dropped) while both sides stay at least twice it: OpenCV's integer-scale path does that in a few
    milliseconds, where INTER_AREA straight from 12 megapixels to 192 px takes ~35 ms on a 2-core EPYC. Both
    are area averages; they differ by rounding (a mean of 0.24/255 per pixel at 4000x3000), as a JPEG decoded
    at a reduced DCT scale differs from either. Smaller photos take the one resize, unchanged."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
    height, width = image.shape[:2]
    while min(height, width) >= 4 * size:
        height, width = height // 2, width // 2
        image = cv2.resize(image[:2 * height, :2 * width], (width, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def load_for_inference(path: str | os.PathLike[str], *, allow_untrained: bool = False) -> Checkpoint:
    """Load a checkpoint file safely. A checkpoint that never trained (epoch 0) is refused unless allowed."""
    checkpoint = load_checkpoint(path)
    if checkpoint.epoch < 1 and not allow_untrained:
        raise CheckpointError(f"{path} holds untrained weights (epoch 0); refusing to serve random predictions")
    return checkpoint


class SegmenterBase:
    """What every runtime's engine offers (torch here, ONNX Runtime and OpenVINO in ``models.engine.exported``):
    ``preprocess`` on request threads, ``forward`` on model threads (with the calling thread's intra-op thread
    count, ``torch.set_num_threads``), ``warmup``, and ``predict``/``predict_batch`` for whole images."""

    checkpoint: Checkpoint
    device: torch.device
    precision: str
    runtime: str
    image_size: int
    info: SegmenterInfo
    # predict/predict_batch drop detached regions smaller than this share of the largest (models.imaging.blobs) at this
    # threshold; 0 = the model's map untouched. forward never does.
    min_blob_ratio: float = 0.0
    blob_threshold: float = 0.5

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> (3, S, S) uint8 tensor at the model's input size (as training resizes: INTER_AREA).

        Normalisation is left to :meth:`forward`, which does it on the device in one vectorised pass."""
        return torch.from_numpy(resize_for_model(image, self.image_size)).permute(2, 0, 1)

    @property
    def compiled(self) -> bool:
        return False

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, S, S) fp32 foreground probabilities on the CPU.

        uint8 batches (from :meth:`preprocess`) are normalised here; float batches are taken as normalised."""
        raise NotImplementedError

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> float:
        """Run dummy batches (building whatever the runtime builds on first use); returns seconds."""
        raise NotImplementedError

    def predict_batch(self, images: Sequence[np.ndarray],
                      output_sizes: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """Probability maps (float32, HxW) for each image, at ``output_sizes`` ((W, H)) or the input's size."""
        if not images:
            return []
        batch = torch.stack([self.preprocess(image) for image in images])
        probs = [drop_small_blobs(p, self.blob_threshold, self.min_blob_ratio) for p in self.forward(batch).numpy()]
        sizes = output_sizes or [(image.shape[1], image.shape[0]) for image in images]
        return [self.resize_probability(p, size) for p, size in zip(probs, sizes, strict=True)]

    def predict(self, image: np.ndarray, output_size: tuple[int, int] | None = None) -> np.ndarray:
        return self.predict_batch([image], [output_size] if output_size else None)[0]

    @staticmethod
    def resize_probability(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Bilinear up-sampling of the model-size map to (W, H): one resize out, whatever the photo size."""
        if (prob.shape[1], prob.shape[0]) == tuple(size):
            return prob
        return cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR)


class Segmenter(SegmenterBase):
    """The PyTorch engine. Load once, warm up, then ``forward``/``predict``/``predict_batch`` from any thread,
    concurrently too: each call runs with the calling thread's intra-op thread count (``torch.set_num_threads`` on
    that thread).

    With ``compile`` on, :meth:`warmup` compiles the model for the batch sizes it is given; a batch of any other
    size runs eager rather than stalling a request on a compilation of tens of seconds.
    """

    def __init__(self, checkpoint: Checkpoint, *, device: str = "auto", precision: str = "auto",
                 channels_last: bool = True, compile: str = "off",
                 checkpoint_path: str | os.PathLike[str] | None = None) -> None:
        keep_freed_memory()  # before the model's first allocations: see its docstring
        self.runtime = "torch"
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = dtype_of(self.precision)
        self.channels_last = channels_last
        self.image_size = checkpoint.image_size
        model = checkpoint.build_model().eval()
        self.folded_batchnorms = fold_batchnorm(model)
        # Weights in the compute dtype: autocast would re-cast every weight on every call.
        self.model: nn.Module = model.to(self.device, self.dtype)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._compile_forced = compile.strip().lower() == "on"
        self._compiled: nn.Module | None = None
        if resolve_compile(compile, self.device):
            self._compiled = torch.compile(self.model, dynamic=False)  # type: ignore[assignment]
        self._compiled_shapes: set[tuple[int, ...]] = set()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cudnn pick the fastest kernels once
        # Normalisation happens in forward, on the model's device: uint8 crosses threads (and the PCIe bus).
        self._mean = torch.tensor(checkpoint.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(checkpoint.std, device=self.device).view(1, 3, 1, 1) * 255.0)
        self._compile_lock = threading.Lock()
        path = Path(checkpoint_path) if checkpoint_path else None
        self.info = SegmenterInfo(
            arch=checkpoint.arch, parameters=sum(p.numel() for p in self.model.parameters()),
            device=str(self.device), precision=self.precision, compiled=False, image_size=self.image_size,
            checkpoint_path=str(path) if path else None, checkpoint_sha256=file_sha256(path) if path else None,
            epoch=checkpoint.epoch, metrics=dict(checkpoint.metrics), created_at=checkpoint.created_at,
            card=dict(checkpoint.card),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, device: str = "auto", precision: str = "auto",
                  compile: str = "off", allow_untrained: bool = False) -> Segmenter:
        """Load a checkpoint file safely (see :func:`load_for_inference`)."""
        checkpoint = load_for_inference(path, allow_untrained=allow_untrained)
        return cls(checkpoint, device=device, precision=precision, compile=compile, checkpoint_path=path)

    @property
    def compiled(self) -> bool:
        """True once at least one batch size runs the compiled model."""
        return self._compiled is not None and bool(self._compiled_shapes)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None and tuple(batch.shape) in self._compiled_shapes:
            with _frozen_weights():
                return self._compiled(batch)
        return self.model(batch)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, S, S) fp32 foreground probabilities on the CPU.

        uint8 batches (from :meth:`preprocess`) are normalised here; float batches are taken as normalised."""
        batch = self._model_input(batch)
        logits = self._run(batch)
        return torch.sigmoid(logits.float())[:, 0].cpu()

    def _model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """On the device, normalised if uint8, in the compute dtype and memory format."""
        batch = batch.to(self.device, non_blocking=True)
        if batch.dtype == torch.uint8:
            batch = (batch.float() - self._mean) * self._inv_std
        batch = batch.to(self.dtype)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    @torch.inference_mode()
    def _compile_for(self, batch_size: int) -> None:
        """Compile for one batch size; under ``compile=auto`` a failure (no working toolchain...) means eager."""
        assert self._compiled is not None
        shape = (batch_size, 3, self.image_size, self.image_size)
        batch = self._model_input(noise_batch(shape))
        started = time.perf_counter()
        try:
            with self._compile_lock, _frozen_weights():
                self._compiled(batch)
        except Exception as exc:  # inductor raises many types; all mean "this path is not available"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if self._compile_forced:
                raise RuntimeError(f"torch.compile failed for batch {batch_size}: {reason}") from exc
            log.warning("torch.compile failed (%s); serving the eager model", reason)
            self._compiled = None
            return
        self._compiled_shapes.add(shape)
        log.info("compiled for batch %d in %.1fs", batch_size, time.perf_counter() - started)

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> float:
        """Compile (when enabled) and run dummy batches so the first request does not pay for kernel
        selection; returns seconds. Call it again from each thread that will run the model with another thread
        count: the compiled model is specialised per thread count on its first call there."""
        started = time.perf_counter()
        for size in dict.fromkeys(batch_sizes):
            if self._compiled is not None and (size, 3, self.image_size, self.image_size) not in self._compiled_shapes:
                self._compile_for(size)
            self.forward(noise_batch((size, 3, self.image_size, self.image_size)))
        self.info = dataclasses.replace(self.info, compiled=self.compiled)
        elapsed = time.perf_counter() - started
        count = torch.get_num_threads()
        threads = f", {count} thread{'s' if count != 1 else ''}" if self.device.type == "cpu" else ""
        log.info("warm-up on %s (%s, %s%s) took %.2fs", self.device, self.precision,
                 "compiled" if self.compiled else "eager", threads, elapsed)
        return elapsed


@contextlib.contextmanager
def _frozen_weights() -> Iterator[None]:
    """Inductor's freezing: weights become constants, so BN-folded convs get ReLU fused and weights pre-packed.
    A C++ wrapper: the compiled forward is one call from Python, not one per kernel, so it does not queue for the
    GIL behind the request threads between kernels (measured: +5% service throughput, 2 cores). And dynamic
    threads: kernels ask OpenMP for the calling thread's thread count instead of fixing it at compile time, so
    model lanes run one compiled model on all the cores or on a share of them.

    Read at compile time, so it wraps every call that may compile. Inductor's config is per thread (context
    variables), so lanes entering and leaving it at the same time do not disturb each other;
    ``torch.compile(options=...)`` would be per model but ignores ``freezing`` (measured 49 against 74 img/s).
    Imported lazily: inductor is heavy."""
    from torch._inductor import config as inductor_config

    with inductor_config.patch({"freezing": True, "cpp_wrapper": True, "cpp.dynamic_threads": True}):
        yield


def noise_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 batch of uniform noise for warm-up. Not zeros: when the one-thread variant of the compiled model was
    first run on a constant image, the all-core passes that followed took 20 ms instead of 14 on real photos
    (ResNet34_UNet, 2 cores; the cause was not found, the noise warm-up avoids it)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
