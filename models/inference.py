"""The inference engine shared by the service, ``predict`` and ``evaluate``.

It owns one model on one device and picks the fastest correct path for it: bf16 autocast where the hardware
computes bf16 natively (CUDA, or CPUs with AVX512_BF16/AMX), channels_last, ``inference_mode``, cudnn benchmark.
Images go in as HxWx3 uint8 RGB arrays of any size; probability maps come out at the size asked for.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from models.checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint
from models.runtime import autocast, resolve_device, resolve_precision

__all__ = ["Segmenter", "SegmenterInfo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmenterInfo:
    arch: str
    parameters: int
    device: str
    precision: str
    image_size: int
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    epoch: int
    metrics: dict[str, float]
    created_at: str
    card: dict[str, object]


class Segmenter:
    """Load once, warm up, then ``predict``/``predict_batch`` from any thread (calls are serialised)."""

    def __init__(self, checkpoint: Checkpoint, *, device: str = "auto", precision: str = "auto",
                 channels_last: bool = True, checkpoint_path: str | os.PathLike[str] | None = None) -> None:
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = channels_last
        self.image_size = checkpoint.image_size
        self.model: nn.Module = checkpoint.build_model().to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cudnn pick the fastest kernels once
        self._mean = np.array(checkpoint.mean, dtype=np.float32) * 255.0
        self._inv_std = 1.0 / (np.array(checkpoint.std, dtype=np.float32) * 255.0)
        self._lock = threading.Lock()
        path = Path(checkpoint_path) if checkpoint_path else None
        self.info = SegmenterInfo(
            arch=checkpoint.arch, parameters=sum(p.numel() for p in self.model.parameters()),
            device=str(self.device), precision=self.precision, image_size=self.image_size,
            checkpoint_path=str(path) if path else None, checkpoint_sha256=file_sha256(path) if path else None,
            epoch=checkpoint.epoch, metrics=dict(checkpoint.metrics), created_at=checkpoint.created_at,
            card=dict(checkpoint.card),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, device: str = "auto", precision: str = "auto",
                  allow_untrained: bool = False) -> Segmenter:
        """Load a checkpoint file safely. A checkpoint that never trained (epoch 0) is refused unless allowed."""
        checkpoint = load_checkpoint(path)
        if checkpoint.epoch < 1 and not allow_untrained:
            raise CheckpointError(f"{path} holds untrained weights (epoch 0); refusing to serve random predictions")
        return cls(checkpoint, device=device, precision=precision, checkpoint_path=path)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> normalised (3, S, S) float tensor at the model's input size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
        resized = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        normalised = (resized.astype(np.float32) - self._mean) * self._inv_std
        return torch.from_numpy(normalised.transpose(2, 0, 1).copy())

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, S, S) fp32 foreground probabilities on the CPU."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._lock, autocast(self.device, self.precision):
            logits = self.model(batch)
        return torch.sigmoid(logits.float())[:, 0].cpu()

    def predict_batch(self, images: Sequence[np.ndarray],
                      output_sizes: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """Probability maps (float32, HxW) for each image, at ``output_sizes`` ((W, H)) or the input's size."""
        if not images:
            return []
        batch = torch.stack([self.preprocess(image) for image in images])
        probs = self.forward(batch).numpy()
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

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> float:
        """Run dummy batches so the first request does not pay for kernel selection; returns seconds."""
        started = time.perf_counter()
        for size in batch_sizes:
            self.forward(torch.zeros(size, 3, self.image_size, self.image_size))
        elapsed = time.perf_counter() - started
        log.info("warm-up on %s (%s) took %.2fs", self.device, self.precision, elapsed)
        return elapsed
