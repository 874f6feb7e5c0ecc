"""The inference engine: sizes, batching, and fast paths that agree with the fp32 reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.config import DEFAULT_CHECKPOINT
from models.inference import Segmenter
from models.runtime import cpu_supports_bf16, resolve_device, resolve_precision
from tests.factories import blob_image
from training.data import list_split, load_sample


@pytest.fixture(scope="module")
def fp32(tiny_checkpoint: Path) -> Segmenter:
    return Segmenter.from_file(tiny_checkpoint, device="cpu", precision="fp32")


def test_predict_returns_probabilities_at_the_input_size(fp32: Segmenter) -> None:
    prob = fp32.predict(blob_image(70, 50)[0])
    assert prob.shape == (50, 70) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0


def test_predict_at_a_requested_output_size(fp32: Segmenter) -> None:
    assert fp32.predict(blob_image(70, 50)[0], output_size=(140, 100)).shape == (100, 140)


def test_predict_batch_equals_one_by_one(fp32: Segmenter) -> None:
    images = [blob_image(60 + 7 * i, 40 + 5 * i, seed=i)[0] for i in range(3)]
    batched = fp32.predict_batch(images)
    for image, prob in zip(images, batched, strict=True):
        assert np.allclose(prob, fp32.predict(image), atol=1e-5)


def _agreement(reference: Segmenter, fast: Segmenter, images: list[np.ndarray]) -> float:
    differing = total = 0
    for image in images:
        differing += np.count_nonzero((reference.predict(image) > 0.5) != (fast.predict(image) > 0.5))
        total += image.shape[0] * image.shape[1]
    return differing / total


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512_BF16/AMX)")
def test_bf16_masks_agree_with_fp32_on_real_pets(sample_data: Path) -> None:
    reference = Segmenter.from_file(DEFAULT_CHECKPOINT, device="cpu", precision="fp32")
    fast = Segmenter.from_file(DEFAULT_CHECKPOINT, device="cpu", precision="bf16")
    images = [load_sample(s, True, None)[0] for s in list_split(sample_data, "valid")[:8]]
    assert _agreement(reference, fast, images) <= 0.005


def test_auto_precision_is_bf16_only_where_the_cpu_has_it() -> None:
    expected = "bf16" if cpu_supports_bf16() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("auto", torch.device("cpu"), training=True) == "fp32"


def test_precision_rejects_fp16_on_cpu_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="only offered on CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int4", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_device_garbage_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")
