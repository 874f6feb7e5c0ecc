"""The segmentation use case: bytes in, mask and numbers out. No HTTP here; routes only translate."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.batching import BatchRunner
from app.config import Settings
from app.cores import defer_to_model_lanes, usable_cores
from app.imaging import DecodedImage, decode_ground_truth, decode_image, encode_mask_png, render_output
from app.postprocess import dice_score, to_full_size
from models.inference import Segmenter
from models.runtime import resolve_device

__all__ = ["OUTPUTS", "SegmentResult", "SegmentationService", "model_lanes"]

Output = Literal["mask", "probability", "overlay", "cutout"]
OUTPUTS: tuple[str, ...] = ("mask", "probability", "overlay", "cutout")


def model_lanes(configured: int, on_cpu: bool) -> int:
    """``PETSEG_MODEL_LANES`` when set (not 0), else auto: two on a CPU with two or three cores, else one.

    Two lanes need their second lane to run on one thread (see ``app.cores``), which holds for 2-3 cores: the
    machine it was measured on. On a GPU micro-batching is the lever instead."""
    if configured:
        return configured
    return 2 if on_cpu and 2 <= usable_cores() <= 3 else 1


@dataclass
class SegmentResult:
    width: int
    height: int
    threshold: float
    foreground_probability: float
    foreground_fraction: float
    dice: float | None
    mask_png: bytes
    output: str
    output_png: bytes
    inference_ms: float


class SegmentationService:
    """Holds the loaded model and the batch runner; ``segment`` is safe to call concurrently."""

    def __init__(self, segmenter: Segmenter, settings: Settings, runner: BatchRunner | None = None) -> None:
        self.segmenter = segmenter
        self.settings = settings
        on_cpu = segmenter.device.type == "cpu"
        max_batch = settings.max_batch or (1 if on_cpu else 8)
        lanes = model_lanes(settings.model_lanes, on_cpu)
        self.runner = runner or BatchRunner(max_queue=settings.max_queue, lanes=lanes)
        self.runner.configure(segmenter.forward, max_batch=max_batch, batch_wait_ms=settings.batch_wait_ms,
                              on_batch=self._record_batch)
        # With several lanes on the CPU, request work (event loop, thread pool) must not preempt a pass.
        self._defer_request_work = on_cpu and self.runner.lanes > 1

    @classmethod
    def load(cls, settings: Settings) -> SegmentationService:
        """Load the checkpoint on lane 0's thread, which will run the model (the other lanes start idle)."""
        on_cpu = resolve_device(settings.device).type == "cpu"
        runner = BatchRunner(max_queue=settings.max_queue, lanes=model_lanes(settings.model_lanes, on_cpu))
        try:
            segmenter = runner.call(lambda: Segmenter.from_file(
                settings.checkpoint, device=settings.device, precision=settings.precision,
                compile=settings.compile, allow_untrained=settings.allow_untrained))
        except BaseException:
            runner.close()
            raise
        return cls(segmenter, settings, runner)

    def warmup(self) -> float:
        """Warm (and compile) the batch sizes traffic will use most, single requests and full batches, on lane 0
        with all the cores; then the same sizes on every lane with its share. The compiled model is specialised
        per thread count, so a size not warmed at a lane's share would be compiled while a request waits."""
        started = time.perf_counter()
        sizes = (1, self.runner.max_batch)
        self.runner.call(lambda: self.segmenter.warmup(sizes), threads=self.runner.cores.cores)
        if self.runner.lanes > 1:
            for lane in range(self.runner.lanes):
                self.runner.call(lambda: self.segmenter.warmup(sizes), lane=lane, threads=self.runner.cores.share)
        return time.perf_counter() - started

    def _record_batch(self, size: int, seconds: float) -> None:
        from app.metrics import observe_batch  # local import: metrics are optional for unit tests

        observe_batch(size, seconds)

    def close(self) -> None:
        self.runner.close()

    def _mark_request_thread(self) -> None:
        if self._defer_request_work:
            defer_to_model_lanes()

    def _prepare(self, image: bytes, ground_truth: bytes | None, output: str
                 ) -> tuple[DecodedImage, object, np.ndarray | None]:
        self._mark_request_thread()
        # Overlay and cutout paint on the full-size photo; mask and probability only need the model's size.
        draft = None if output in ("overlay", "cutout") else self.segmenter.image_size
        decoded = decode_image(image, max_pixels=self.settings.max_pixels, draft_size=draft)
        truth = None
        if ground_truth is not None:
            truth = decode_ground_truth(ground_truth, size=(decoded.width, decoded.height),
                                        max_pixels=self.settings.max_pixels,
                                        border_is_pet=self.segmenter.checkpoint.border_is_pet)
        return decoded, self.segmenter.preprocess(decoded.rgb), truth

    def _finish(self, prob_small: np.ndarray, decoded: DecodedImage, truth: np.ndarray | None, threshold: float,
                output: str) -> tuple[float, float, float | None, bytes, bytes]:
        self._mark_request_thread()
        prediction = to_full_size(prob_small, (decoded.width, decoded.height), threshold)
        dice = dice_score(prediction.mask_bool, truth) if truth is not None else None
        mask_png = encode_mask_png(prediction.mask)
        output_png = mask_png
        if output != "mask":
            rgb = decoded.rgb if output in ("overlay", "cutout") else None
            output_png = render_output(output, prediction.mask_bool, prediction.probability, rgb)
        return prediction.foreground_probability, prediction.foreground_fraction, dice, mask_png, output_png

    async def segment(self, image: bytes, *, ground_truth: bytes | None = None, threshold: float | None = None,
                      output: str = "mask") -> SegmentResult:
        self._mark_request_thread()  # the event loop's thread
        threshold = self.settings.threshold if threshold is None else threshold
        decoded, tensor, truth = await run_in_threadpool(self._prepare, image, ground_truth, output)
        started = time.perf_counter()
        prob_small = await self.runner.submit(tensor, self.settings.request_timeout_s)  # type: ignore[arg-type]
        inference_ms = (time.perf_counter() - started) * 1000.0
        mean_prob, fraction, dice, mask_png, output_png = await run_in_threadpool(
            self._finish, prob_small, decoded, truth, threshold, output)
        return SegmentResult(decoded.width, decoded.height, threshold, mean_prob, fraction, dice, mask_png, output,
                             output_png, inference_ms)
