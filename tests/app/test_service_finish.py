"""The use case without HTTP: how ``SegmentationService`` builds its lanes from the settings, what ``segment``
does with the model's map (the small-blob filter, the region of interest, the rendering's inputs, the
foreground box), and the PNG answer's headers.

The model is replaced by a fixed probability map, so every expected pixel is known in advance."""
from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.requests import Request

from app import metrics
from app.batching import BatchRunner
from app.compose import Box
from app.config import Settings
from app.errors import ApiError
from app.imaging import DecodedImage
from app.model_set import ModelSet
from app.placement import parse_roi
from app.rendering import RenderRequest
from app.routes.segment import answer_format, image_response
from app.schemas import ModelRef
from app.service import SegmentationService, SegmentResult, model_lanes
from models.engine.segmenter import Segmenter
from tests.factories import jpeg_bytes, png_bytes

S = 64  # the tiny checkpoint's input side; photos are 2S x 2S, so each map pixel is a 2x2 block


def _map() -> np.ndarray:
    """Three blobs at threshold 0.3: a 16x16 one (0.9), an 8x8 one (0.9, a quarter of it) and a faint 8x8 one
    (0.4, a region only under 0.4)."""
    prob = np.zeros((S, S), np.float32)
    prob[4:20, 4:20] = 0.9
    prob[40:48, 40:48] = 0.9
    prob[40:48, 8:16] = 0.4
    return prob


@pytest.fixture(scope="module")
def service(tiny_checkpoint: Path) -> Iterator[SegmentationService]:
    segmenter = Segmenter.from_file(tiny_checkpoint, device="cpu", precision="fp32")
    fixed = torch.from_numpy(_map())
    segmenter.forward = lambda batch: fixed.expand(len(batch), S, S).clone()  # type: ignore[method-assign]
    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", min_blob_ratio=0.5, model_lanes=1,
                        _env_file=None)
    service = SegmentationService(segmenter, settings)
    yield service
    service.close()


def _photo() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (2 * S, 2 * S, 3), dtype=np.uint8)


def _segment(service: SegmentationService, output: str | RenderRequest = "mask", data: bytes | None = None,
             **kwargs: object) -> SegmentResult:
    return asyncio.run(service.segment(data if data is not None else png_bytes(_photo()), output=output,
                                       **kwargs))


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_small_blobs_are_dropped_at_the_requests_threshold_and_the_settings_ratio(
        service: SegmentationService) -> None:
    # at 0.3 the faint blob is a region too; both small ones are a quarter of the big one, under the ratio 0.5
    mask = _png(_segment(service, threshold=0.3).mask_png)
    assert mask.shape == (2 * S, 2 * S)
    assert mask[20:28, 20:28].min() == 255  # inside the big blob
    assert mask[80:96, 80:96].max() == 0 and mask[80:96, 16:32].max() == 0
    assert np.count_nonzero(mask) == pytest.approx(32 * 32, abs=4 * 32)


@pytest.mark.parametrize(("border_is_pet", "dice"), [(True, 2 * 1024 / (1024 + 1280)), (False, 1.0)])
def test_a_trimaps_border_counts_as_the_model_was_trained(service: SegmentationService,
                                                          monkeypatch: pytest.MonkeyPatch, border_is_pet: bool,
                                                          dice: float) -> None:
    """The mask is the 32x32 blob at (8, 8) of the photo; the trimap's pet is that blob, its border band the 8x32
    below it."""
    trimap = np.full((2 * S, 2 * S), 2, np.uint8)
    trimap[8:40, 8:40] = 1
    trimap[40:48, 8:40] = 3
    monkeypatch.setattr(service.segmenter.checkpoint, "border_is_pet", border_is_pet)
    assert _segment(service, ground_truth=png_bytes(trimap)).dice == pytest.approx(dice)


def test_the_region_of_interest_clears_the_mask_outside_it(service: SegmentationService) -> None:
    request = RenderRequest(roi=parse_roi("0px 0px 20px 128px"))  # the left part of the big blob only
    result = _segment(service, request, threshold=0.5)
    mask = _png(result.mask_png)
    assert mask[:, 20:].max() == 0 and mask[20:28, 10:20].min() == 255
    assert result.foreground_fraction == pytest.approx(np.count_nonzero(mask) / mask.size)


def test_the_soft_alpha_is_drawn_from_the_filtered_map(service: SegmentationService) -> None:
    alpha = _png(_segment(service, "alpha", threshold=0.3).output_png)[..., 3]
    assert alpha[20:28, 20:28].min() == 255  # the big blob: opaque
    assert alpha[84:92, 84:92].max() == 0  # the dropped blob: clear


def test_a_background_image_goes_under_the_cutout(service: SegmentationService) -> None:
    green = np.zeros((2 * S, 2 * S, 3), np.uint8)
    green[..., 1] = 255
    request = RenderRequest(output="cutout", background_image=png_bytes(green))
    answer = _png(_segment(service, request, threshold=0.5).output_png)
    assert answer.shape == (2 * S, 2 * S, 3)
    np.testing.assert_array_equal(answer[110:, 110:], green[110:, 110:])


def test_an_empty_crop_names_the_requests_threshold(service: SegmentationService) -> None:
    with pytest.raises(ApiError, match=r"no pet found in the image \(at threshold 0\.95\)"):
        _segment(service, RenderRequest(output="probability", crop=True), threshold=0.95)


def test_a_rendering_without_the_photo_works_from_a_draft_decode(service: SegmentationService) -> None:
    # a JPEG four times the model's side decodes in draft mode for the probability map; the rendering must
    # not be handed that smaller photo
    photo = np.full((4 * S, 4 * S, 3), 128, np.uint8)
    result = _segment(service, RenderRequest(output="probability", crop=True), data=jpeg_bytes(photo),
                      threshold=0.5)
    assert result.crop is not None and (result.width, result.height) == (4 * S, 4 * S)


def test_the_foreground_box_is_given_when_asked(service: SegmentationService) -> None:
    assert _segment(service, threshold=0.5).foreground is None
    assert _segment(service, threshold=0.5, foreground_box=True).foreground == Box(8, 8, 32, 32)
    assert _segment(service, threshold=0.95, foreground_box=True).foreground == Box(0, 0, 0, 0)


# --- the lanes, from the settings ---------------------------------------------------------------------------------

def _settings(tiny_checkpoint: Path, **values: object) -> Settings:
    return Settings(checkpoint=tiny_checkpoint, device="cpu", _env_file=None, **values)


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint: Path) -> Segmenter:
    return Segmenter.from_file(tiny_checkpoint, device="cpu", precision="fp32")


def test_lanes_and_batches_follow_the_settings_and_the_device(tiny_checkpoint: Path, segmenter: Segmenter,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    service = SegmentationService(segmenter, _settings(tiny_checkpoint, model_lanes=3))
    assert (service.runner.lanes, service.runner.max_batch) == (3, 1)  # on the CPU: one image a pass
    service.close()
    service = SegmentationService(segmenter, _settings(tiny_checkpoint, model_lanes=0))
    assert service.runner.lanes == model_lanes(0, on_cpu=True)
    service.close()
    # on a GPU (only the device's name is read here): batches of 8 and one lane
    monkeypatch.setattr(segmenter, "device", torch.device("cuda"))
    service = SegmentationService(segmenter, _settings(tiny_checkpoint, model_lanes=0))
    assert (service.runner.lanes, service.runner.max_batch) == (1, 8)
    service.close()


def test_the_queue_holds_max_queue_requests(tiny_checkpoint: Path, segmenter: Segmenter) -> None:
    service = SegmentationService(segmenter, _settings(tiny_checkpoint, max_queue=1, model_lanes=1))
    entered, gate = threading.Event(), threading.Event()
    holder = threading.Thread(target=service.runner.call, args=(lambda: entered.set() or gate.wait(60),))
    holder.start()
    tensor = segmenter.preprocess(_photo())
    try:
        assert entered.wait(60)  # the only lane is busy
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(asyncio.run, service.runner.submit(tensor, 60))
            for _ in range(6000):  # a bounded wait on a state, not on the clock
                if service.runner.depth == 1:
                    break
                time.sleep(0.01)
            with pytest.raises(ApiError) as refused:  # refused at once; a queued one would time out instead
                asyncio.run(service.runner.submit(tensor, 1))
            gate.set()
            assert waiting.result().shape == (S, S)
        assert (refused.value.status_code, refused.value.reason) == (503, "queue_full")
    finally:
        gate.set()
        holder.join()
        service.close()


def test_each_pass_is_recorded_under_the_models_name(tiny_checkpoint: Path, segmenter: Segmenter,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    service = SegmentationService(segmenter, _settings(tiny_checkpoint, model_lanes=1))
    passes: list[tuple[int, str]] = []
    monkeypatch.setattr(metrics, "observe_batch", lambda size, seconds, model: passes.append((size, model)))
    try:
        _segment(service, threshold=0.5)
    finally:
        service.close()
    assert passes == [(1, "default")]


@pytest.mark.parametrize(("cores", "on_cpu", "lanes"), [(1, True, 1), (2, True, 2), (3, True, 2), (4, True, 1),
                                                        (2, False, 1)])
def test_auto_lanes_are_two_on_a_cpu_with_two_or_three_cores(cores: int, on_cpu: bool, lanes: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.service.usable_cores", lambda: cores)
    assert model_lanes(0, on_cpu) == lanes
    assert model_lanes(5, on_cpu) == 5  # PETSEG_MODEL_LANES, when set, is taken as it is


def test_load_opens_each_model_as_the_settings_say(tiny_checkpoint: Path, segmenter: Segmenter,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, dict]] = []

    loaded_on: list[threading.Thread] = []

    def open_segmenter(path: str, **kwargs: object) -> Segmenter:
        opened.append((str(path), kwargs))
        loaded_on.append(threading.current_thread())
        return segmenter
    monkeypatch.setattr("app.service.open_segmenter", open_segmenter)
    settings = _settings(tiny_checkpoint, runtime="torch", precision="fp32", compile="off", allow_untrained=True,
                         calibration_data=tiny_checkpoint.parent, max_queue=3, model_lanes=1)
    service = SegmentationService.load(settings)
    try:
        assert opened == [(str(tiny_checkpoint), dict(
            runtime="torch", device="cpu", precision="fp32", compile="off", allow_untrained=True,
            calibration=tiny_checkpoint.parent))]
        assert service.segmenter is segmenter and service.runner.lanes == 1
        # the lane that loaded the model is the one that serves it (not a second runner built alike)
        assert service.runner.call(threading.current_thread) is loaded_on[0]
    finally:
        service.close()


def test_a_bad_background_image_is_refused_by_its_field_name(service: SegmentationService) -> None:
    with pytest.raises(ApiError) as refused:
        _segment(service, RenderRequest(output="cutout", background_image=b"not an image"))
    assert refused.value.status_code in (400, 415) and refused.value.detail.startswith("background_image")


def test_a_second_models_passes_are_recorded_under_its_name(tiny_checkpoint: Path, segmenter: Segmenter,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    other = Segmenter.from_file(tiny_checkpoint, device="cpu", precision="fp32")
    service = SegmentationService(ModelSet({"default": segmenter, "other": other}),
                                  _settings(tiny_checkpoint, model_lanes=1))
    passes: list[tuple[int, str]] = []
    monkeypatch.setattr(metrics, "observe_batch", lambda size, seconds, model: passes.append((size, model)))
    try:
        _segment(service, model="other")
    finally:
        service.close()
    assert passes == [(1, "other")]


def test_the_model_sees_a_draft_decode_unless_the_answer_paints_on_the_photo(
        service: SegmentationService, monkeypatch: pytest.MonkeyPatch) -> None:
    segmenter = service.segmenter
    sides: list[tuple[int, int]] = []
    real = segmenter.preprocess
    monkeypatch.setattr(segmenter, "preprocess", lambda rgb: sides.append(rgb.shape[:2]) or real(rgb))
    big = jpeg_bytes(np.full((8 * S, 8 * S, 3), 128, np.uint8))
    _segment(service, "mask", data=big)
    _segment(service, "cutout", data=big)
    assert sides[0] < (8 * S, 8 * S) and min(sides[0]) >= S  # JPEG's reduced DCT scale, still >= the model's side
    assert sides[1] == (8 * S, 8 * S)


def test_a_photo_already_decoded_is_segmented_at_its_size(service: SegmentationService) -> None:
    photo = _photo()
    result = _segment(service, data=DecodedImage(photo, 2 * S, 2 * S, "png"), threshold=0.5)  # type: ignore[arg-type]
    assert (result.width, result.height) == (2 * S, 2 * S)
    np.testing.assert_array_equal(_png(result.mask_png), _png(_segment(service, threshold=0.5).mask_png))


def test_warmup_runs_on_lane_0_with_every_core_and_returns_its_duration(tiny_checkpoint: Path,
                                                                         segmenter: Segmenter,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    runner = BatchRunner(lanes=1, cores=3)  # three cores: a thread count no lane starts with here
    service = SegmentationService(segmenter, _settings(tiny_checkpoint), runner)
    seen: list[tuple[tuple[int, ...], int, str]] = []
    monkeypatch.setattr(segmenter, "warmup", lambda sizes: seen.append(
        (tuple(sizes), torch.get_num_threads(), threading.current_thread().name)) or 0.0)
    started = time.perf_counter()
    seconds = service.warmup()
    assert 0 < seconds <= time.perf_counter() - started
    service.close()
    assert seen == [((1, 1), 3, "petseg-model-0")]  # one lane: warmed once, with all three cores


# --- the PNG answer ---------------------------------------------------------------------------------------------

def _result(**overrides: object) -> SegmentResult:
    values: dict = dict(width=640, height=480, threshold=0.35, foreground_probability=0.1234567,
                        foreground_fraction=0.5, dice=None, mask_png=b"mask", output="cutout",
                        output_png=b"\x89PNG answer", inference_ms=12.345, media_type="image/png")
    values.update(overrides)
    return SegmentResult(**values)


def _request(accept: str | None) -> Request:
    headers = [(b"accept", accept.encode())] if accept is not None else []
    return Request({"type": "http", "method": "POST", "path": "/segment", "headers": headers})


@pytest.mark.parametrize(("format", "accept", "jpeg_possible", "expected"), [
    ("png", "application/json", True, "png"),  # ?format= wins over the header
    (None, None, True, "json"),
    (None, "image/png", True, "png"),
    (None, "image/jpeg", True, "jpeg"),
    (None, "image/jpeg", False, "json"),  # a transparent rendering has no JPEG to offer
    (None, "image/jpeg, image/png;q=0.5", False, "png"),
])
def test_the_answers_format_is_the_query_or_the_accept_header(format: str | None, accept: str | None,
                                                              jpeg_possible: bool, expected: str) -> None:
    assert answer_format(_request(accept), format, jpeg_possible) == expected


def test_the_png_answer_carries_every_number_as_a_header() -> None:
    response = image_response(_result(), ModelRef(name="fast", arch="unet", checkpoint_sha256=None))
    assert response.body == b"\x89PNG answer" and response.media_type == "image/png"
    headers = {k: v for k, v in response.headers.items() if k.startswith("x-")}
    assert headers == {"x-foreground-probability": "0.123457", "x-foreground-fraction": "0.500000",
                       "x-image-size": "640x480", "x-threshold": "0.35", "x-inference-ms": "12.3",
                       "x-model": "unet", "x-model-name": "fast"}


def test_dice_and_the_crop_are_headers_only_when_there_are_some() -> None:
    result = _result(dice=0.9876543, crop=Box(12, 34, 56, 78), media_type="image/jpeg")
    response = image_response(result, ModelRef(name="default", arch="resnet34_unet", checkpoint_sha256=None))
    assert response.headers["x-dice"] == "0.987654" and response.headers["x-crop"] == "12,34,56,78"
    assert response.media_type == "image/jpeg"
