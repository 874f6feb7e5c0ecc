"""The inference engine: sizes, batching, and fast paths that agree with the fp32 reference."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.engine.runtime import cpu_supports_bf16, keep_freed_memory, resolve_device, resolve_precision
from models.engine.segmenter import Segmenter, resize_for_model
from tests.factories import blob_image
from training.data import list_split, load_sample

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "default.pt"
needs_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512_BF16/AMX)"
)


@pytest.fixture(scope="module")
def fp32(tiny_checkpoint: Path) -> Segmenter:
    return Segmenter.from_file(tiny_checkpoint, device="cpu", precision="fp32")


def test_predict_returns_probabilities_at_the_input_size(fp32: Segmenter) -> None:
    prob = fp32.predict(blob_image(70, 50)[0])
    assert prob.shape == (50, 70) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0


def test_predict_at_a_requested_output_size(fp32: Segmenter) -> None:
    prob = fp32.predict(blob_image(70, 50)[0], output_size=(140, 100))  # (W, H)
    assert prob.shape == (100, 140)
    assert 0.0 <= prob.min() and prob.max() <= 1.0


def test_predict_rejects_what_is_not_hxwx3_uint8(fp32: Segmenter) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        fp32.predict(np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        fp32.predict(np.zeros((20, 20, 3), np.float32))


def test_predict_batch_equals_one_by_one(fp32: Segmenter) -> None:
    images = [blob_image(60 + 7 * i, 40 + 5 * i, seed=i)[0] for i in range(2)]
    batched = fp32.predict_batch(images)
    assert [p.shape for p in batched] == [(40, 60), (45, 67)]
    for image, prob in zip(images, batched, strict=True):
        np.testing.assert_allclose(prob, fp32.predict(image), atol=1e-5)


def test_predict_batch_of_nothing_is_empty(fp32: Segmenter) -> None:
    assert fp32.predict_batch([]) == []


def _disagreement(reference: list[np.ndarray], fast: list[np.ndarray]) -> float:
    differing = sum(np.count_nonzero((a > 0.5) != (b > 0.5)) for a, b in zip(reference, fast, strict=True))
    return differing / sum(a.size for a in reference)


@needs_bf16
def test_bf16_agrees_with_fp32_on_blobs(tiny_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    reference = Segmenter(checkpoint, device="cpu", precision="fp32")
    fast = Segmenter(checkpoint, device="cpu", precision="bf16")
    images = [blob_image(64 + 9 * i, 48 + 5 * i, seed=i)[0] for i in range(2)]
    a, b = reference.predict_batch(images), fast.predict_batch(images)
    # A random-init model predicts ~0.52 everywhere: masks alone would agree trivially, so compare maps too.
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) < 0.01
    assert _disagreement(a, b) <= 0.005


@needs_bf16
@pytest.mark.slow
@pytest.mark.skipif(
    not DEFAULT_WEIGHTS.is_file(), reason="no trained checkpoint at models/weights/default.pt"
)
def test_bf16_masks_agree_with_fp32_on_real_pets(sample_data: Path) -> None:
    checkpoint = load_checkpoint(DEFAULT_WEIGHTS)
    reference = Segmenter(checkpoint, device="cpu", precision="fp32")
    fast = Segmenter(checkpoint, device="cpu", precision="bf16")
    images = [load_sample(s, True, None)[0] for s in list_split(sample_data, "valid")[:5]]
    a, b = reference.predict_batch(images), fast.predict_batch(images)
    foreground = np.mean([np.mean(p > 0.5) for p in a])
    assert 0.05 < foreground < 0.95  # a real segmentation, so agreement means something
    assert _disagreement(a, b) <= 0.005


def test_auto_precision_on_the_cpu_is_bf16_only_where_native() -> None:
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if cpu_supports_bf16() else "fp32")


def test_auto_precision_for_cpu_training_is_fp32() -> None:
    assert resolve_precision("auto", torch.device("cpu"), training=True) == "fp32"


@pytest.mark.parametrize("name", ["fp32", "bf16", " BF16 "])
def test_precision_accepts_cpu_choices(name: str) -> None:
    assert resolve_precision(name, torch.device("cpu")) == name.strip().lower()


def test_precision_rejects_fp16_on_cpu() -> None:
    with pytest.raises(ValueError, match="only offered on CUDA"):
        resolve_precision("fp16", torch.device("cpu"))


def test_precision_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        resolve_precision("int4", torch.device("cpu"))


def test_segmenter_rejects_fp16_on_cpu(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="only offered on CUDA"):
        Segmenter(load_checkpoint(tiny_checkpoint), device="cpu", precision="fp16")


@pytest.mark.parametrize("name", ["cpu", "auto", " CPU "])
def test_device_cpu_and_auto_resolve(name: str) -> None:
    expected = "cuda" if name == "auto" and torch.cuda.is_available() else "cpu"
    assert resolve_device(name).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_device_cuda_without_a_gpu_is_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "", "meta"])
def test_device_garbage_is_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match="expected auto, cpu, cuda"):
        resolve_device(name)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc thresholds are a glibc setting")
def test_malloc_thresholds_are_accepted_by_glibc() -> None:
    keep_freed_memory.cache_clear()
    assert keep_freed_memory() is True  # False would mean glibc refused a value (e.g. over its 32 MiB limit)


def test_uint8_batches_are_normalised_in_forward_as_the_training_data_was(fp32: Segmenter) -> None:
    image = blob_image(90, 70)[0]
    pixels = fp32.preprocess(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, fp32.image_size, fp32.image_size)
    mean = np.array(fp32.checkpoint.mean, np.float32) * 255.0
    std = np.array(fp32.checkpoint.std, np.float32) * 255.0
    normalised = (pixels.permute(1, 2, 0).numpy().astype(np.float32) - mean) / std
    expected = fp32.forward(torch.from_numpy(normalised.transpose(2, 0, 1).copy())[None])
    torch.testing.assert_close(fp32.forward(pixels[None]), expected, atol=1e-5, rtol=1e-5)


# --- resize_for_model ------------------------------------------------------------------------------------------

def _photo(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(width + height)
    colours = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    field = cv2.resize(colours, (width, height), interpolation=cv2.INTER_CUBIC)  # smooth regions
    return np.clip(field.astype(np.int16) + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(4000, 3000), (3001, 2001), (800, 1537)])
def test_big_photos_resize_for_the_model_as_one_area_average_would(size: tuple[int, int]) -> None:
    photo = _photo(*size)
    direct = cv2.resize(photo, (192, 192), interpolation=cv2.INTER_AREA).astype(int)
    halved_first = resize_for_model(photo, 192)
    assert halved_first.shape == (192, 192, 3) and halved_first.dtype == np.uint8
    difference = np.abs(halved_first.astype(int) - direct)
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 4  # rounding, not geometry


@pytest.mark.parametrize("size", [(500, 375), (767, 2000), (191, 150)])
def test_photos_under_four_times_the_model_side_take_the_one_resize(size: tuple[int, int]) -> None:
    photo = _photo(*size)
    np.testing.assert_array_equal(resize_for_model(photo, 192),
                                  cv2.resize(photo, (192, 192), interpolation=cv2.INTER_AREA))


def _halve(image: np.ndarray) -> np.ndarray:
    """Means of 2x2 blocks, rounded half up, an odd last row or column dropped: the halving written out."""
    height, width = image.shape[0] // 2, image.shape[1] // 2
    blocks = image[:2 * height, :2 * width].astype(np.int32).reshape(height, 2, width, 2, -1)
    return ((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)


@pytest.mark.parametrize("transpose", [False, True], ids=["odd-column", "odd-row"])
def test_a_photo_of_exactly_four_times_the_side_is_halved_first_and_its_odd_line_dropped(transpose: bool) -> None:
    # 32 = 4 x 8 exactly; the 33rd column (or row) is white and the rest black with a little texture. Halved
    # (the odd line dropped, 16x16), then area-averaged 2:1 to 8x8, no white reaches the answer; one area resize
    # of 33 lines into 8 would smear it into the last output column (or row).
    photo = np.zeros((32, 33, 3), np.uint8)
    photo[::3, ::5] = 90  # texture, so that a wrong block grid shows too
    photo[:, 32] = 255
    if transpose:
        photo = np.ascontiguousarray(photo.transpose(1, 0, 2))
    expected = _halve(_halve(photo))
    np.testing.assert_array_equal(resize_for_model(photo, 8), expected)
    one_resize = cv2.resize(photo, (8, 8), interpolation=cv2.INTER_AREA)
    assert one_resize.max() > expected.max()


def test_a_photo_just_under_four_times_the_side_takes_the_one_resize() -> None:
    photo = np.zeros((31, 33, 3), np.uint8)
    photo[:, 32] = 255
    np.testing.assert_array_equal(resize_for_model(photo, 8),
                                  cv2.resize(photo, (8, 8), interpolation=cv2.INTER_AREA))
