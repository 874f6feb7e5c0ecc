"""The segmentation use case: bytes in, mask and numbers out. No HTTP here; routes only translate."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from app import rendering
from app.batching import BatchRunner
from app.compose import Box, subject_box
from app.config import DEFAULT_MODEL_NAME, Settings
from app.cores import defer_to_model_lanes, usable_cores
from app.imaging import DecodedImage, decode_ground_truth, decode_image, encode_mask_png
from app.model_set import ModelSet
from app.postprocess import dice_score, restrict_to, to_full_size
from app.rendering import OUTPUTS, RenderRequest
from models.checkpoint import CheckpointError
from models.engine.runtime import resolve_device
from models.engine.segmenter import SegmenterBase
from models.engine.selection import open_segmenter
from models.imaging.blobs import drop_small_blobs

__all__ = ["OUTPUTS", "SegmentResult", "SegmentationService", "model_lanes"]



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
    output_png: bytes  # the rendering's bytes: a PNG, or a JPEG when the request asked for one (media_type)
    inference_ms: float
    model: str = DEFAULT_MODEL_NAME  # the name of the model that answered
    media_type: str = "image/png"
    crop: Box | None = None  # where the rendering was cut from the photo, when cropped
    # when asked for (segment(foreground_box=True)): the mask's bounding box in the photo's pixels; 0x0 if empty
    foreground: Box | None = None
    # with a placement (remove.bg's scale / position): the pet's box in the answer's pixels
    subject: Box | None = None


class SegmentationService:
    """Holds the loaded models and the batch runner they share; ``segment`` is safe to call concurrently."""

    def __init__(self, models: ModelSet | SegmenterBase, settings: Settings,
                 runner: BatchRunner | None = None) -> None:
        self.models = models if isinstance(models, ModelSet) else ModelSet({DEFAULT_MODEL_NAME: models})
        self.segmenter = self.models.default.segmenter  # the default model: /model, and one-model callers
        self.settings = settings
        on_cpu = self.segmenter.device.type == "cpu"
        max_batch = settings.max_batch or (1 if on_cpu else 8)
        lanes = model_lanes(settings.model_lanes, on_cpu)
        self.runner = runner or BatchRunner(max_queue=settings.max_queue, lanes=lanes)
        self.runner.configure(self.segmenter.forward, max_batch=max_batch, batch_wait_ms=settings.batch_wait_ms,
                              on_batch=self._batch_recorder(self.models.default_name))
        for served in self.models:
            if not served.is_default:
                self.runner.add_model(served.name, served.segmenter.forward, self._batch_recorder(served.name))
        # With several lanes on the CPU, request work (event loop, thread pool) must not preempt a pass.
        self._defer_request_work = on_cpu and self.runner.lanes > 1

    @classmethod
    def load(cls, settings: Settings) -> SegmentationService:
        """Load the checkpoints on lane 0's thread, which will run the models (the other lanes start idle)."""
        on_cpu = resolve_device(settings.device).type == "cpu"
        runner = BatchRunner(max_queue=settings.max_queue, lanes=model_lanes(settings.model_lanes, on_cpu))
        segmenters: dict[str, SegmenterBase] = {}
        try:
            for name, path in settings.model_checkpoints().items():
                try:
                    segmenters[name] = runner.call(lambda path=path: open_segmenter(
                        path, runtime=settings.runtime, device=settings.device, precision=settings.precision,
                        compile=settings.compile, allow_untrained=settings.allow_untrained,
                        calibration=settings.calibration_data))
                except CheckpointError as exc:
                    if settings.checkpoints is None:
                        raise
                    raise CheckpointError(f"model {name!r}: {exc}") from exc
        except BaseException:
            runner.close()
            raise
        return cls(ModelSet(segmenters), settings, runner)

    def warmup(self) -> float:
        """Warm (and compile) the batch sizes traffic will use most, single requests and full batches, on lane 0
        with all the cores; then the same sizes on every lane with its share. The compiled model is specialised
        per thread count, so a size not warmed at a lane's share would be compiled while a request waits."""
        started = time.perf_counter()
        sizes = (1, self.runner.max_batch)
        for served in self.models:
            segmenter = served.segmenter
            self.runner.call(lambda: segmenter.warmup(sizes), threads=self.runner.cores.cores)  # noqa: B023
            if self.runner.lanes > 1:
                for lane in range(self.runner.lanes):
                    self.runner.call(lambda: segmenter.warmup(sizes), lane=lane,  # noqa: B023
                                     threads=self.runner.cores.share)
        return time.perf_counter() - started

    @staticmethod
    def _batch_recorder(model: str) -> Callable[[int, float], None]:
        def record(size: int, seconds: float) -> None:
            from app.metrics import observe_batch  # local import: metrics are optional for unit tests

            observe_batch(size, seconds, model)

        return record

    def close(self) -> None:
        self.runner.close()

    def _mark_request_thread(self) -> None:
        if self._defer_request_work:
            defer_to_model_lanes()

    def _prepare(self, image: bytes | DecodedImage, ground_truth: bytes | None, options: RenderRequest,
                 segmenter: SegmenterBase) -> tuple[DecodedImage, object, np.ndarray | None, np.ndarray | None]:
        self._mark_request_thread()
        # Overlay and cutouts paint on the full-size photo; mask and probability only need the model's size.
        draft = None if options.needs_photo else segmenter.image_size
        decoded = image if isinstance(image, DecodedImage) else decode_image(
            image, max_pixels=self.settings.max_pixels, draft_size=draft)
        truth = None
        if ground_truth is not None:
            truth = decode_ground_truth(ground_truth, size=(decoded.width, decoded.height),
                                        max_pixels=self.settings.max_pixels,
                                        border_is_pet=segmenter.checkpoint.border_is_pet)
        background = None  # decoded before the model runs: a bad background image is refused at no cost
        if options.background_image is not None:
            background = decode_image(options.background_image, max_pixels=self.settings.max_pixels,
                                      field="background_image").rgb
        return decoded, segmenter.preprocess(decoded.rgb), truth, background

    def _finish(self, prob_small: np.ndarray, decoded: DecodedImage, truth: np.ndarray | None, threshold: float,
                options: RenderRequest, background: np.ndarray | None, foreground_box: bool
                ) -> tuple[float, float, float | None, bytes, rendering.Rendered, Box | None]:
        self._mark_request_thread()
        prob_small = drop_small_blobs(prob_small, threshold, self.settings.min_blob_ratio)
        prediction = to_full_size(prob_small, (decoded.width, decoded.height), threshold)
        region = options.roi_box(decoded.width, decoded.height)
        if region is not None:  # nothing outside the region of interest is the pet
            prediction = restrict_to(prediction, region)
        dice = dice_score(prediction.mask_bool, truth) if truth is not None else None
        mask_png = encode_mask_png(prediction.mask)
        if options.is_default:  # the plain mask: nothing more to draw
            rendered = rendering.Rendered(mask_png, "image/png", None)
        else:
            rendered = rendering.render(options, prediction, prob_small, decoded.rgb if options.needs_photo else None,
                                        background, threshold=threshold)
        foreground = (subject_box(prediction.mask) or Box(0, 0, 0, 0)) if foreground_box else None
        return prediction.foreground_probability, prediction.foreground_fraction, dice, mask_png, rendered, foreground

    async def segment(self, image: bytes | DecodedImage, *, ground_truth: bytes | None = None,
                      threshold: float | None = None, output: str | RenderRequest = "mask", model: str | None = None,
                      foreground_box: bool = False) -> SegmentResult:
        """``image``: the upload's bytes, or a photo already decoded at its full size (remove.bg's size caps
        shrink it first). ``output``: one of ``OUTPUTS``, or a ``RenderRequest`` with the rendering's options
        (soft edges, background, crop, JPEG). ``model``: a name from PETSEG_CHECKPOINTS (None: the default
        model); an unknown one is a 422. ``foreground_box``: also find the mask's bounding box (a pass over the
        full-size mask, ~2 ms at 12 megapixels, so only when asked)."""
        self._mark_request_thread()  # the event loop's thread
        options = output if isinstance(output, RenderRequest) else RenderRequest(output)
        served = self.models.get(model)
        threshold = self.settings.threshold if threshold is None else threshold
        decoded, tensor, truth, background = await run_in_threadpool(self._prepare, image, ground_truth, options,
                                                                     served.segmenter)
        started = time.perf_counter()
        prob_small = await self.runner.submit(tensor, self.settings.request_timeout_s,  # type: ignore[arg-type]
                                              None if served.is_default else served.name)
        inference_ms = (time.perf_counter() - started) * 1000.0
        mean_prob, fraction, dice, mask_png, rendered, foreground = await run_in_threadpool(
            self._finish, prob_small, decoded, truth, threshold, options, background, foreground_box)
        return SegmentResult(decoded.width, decoded.height, threshold, mean_prob, fraction, dice, mask_png,
                             options.output, rendered.data, inference_ms, served.name, rendered.media_type,
                             rendered.box, foreground, rendered.subject)
