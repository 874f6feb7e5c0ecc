"""The PyTorch engine on its own: what it reports about itself, how it normalises, and its warm-up."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.checkpoint import file_sha256, load_checkpoint
from models.engine.segmenter import Segmenter, noise_batch
from tests.factories import make_checkpoint


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("seg") / "unet.pt", arch="unet", image_size=32, epoch=3)


def test_info_describes_the_loaded_checkpoint(unet_file: Path) -> None:
    checkpoint = load_checkpoint(unet_file)
    segmenter = Segmenter.from_file(unet_file, device="cpu", precision="fp32")
    info = segmenter.info
    assert (info.arch, info.device, info.precision, info.compiled, info.image_size) == ("unet", "cpu", "fp32",
                                                                                        False, 32)
    assert info.parameters == sum(p.numel() for p in segmenter.model.parameters()) > 30_000_000
    assert (info.checkpoint_path, info.checkpoint_sha256) == (str(unet_file), file_sha256(unet_file))
    assert (info.epoch, info.metrics, info.card) == (3, checkpoint.metrics, checkpoint.card)
    assert info.created_at == checkpoint.created_at
    assert (segmenter.runtime, segmenter.image_size, segmenter.precision) == ("torch", 32, "fp32")


def test_a_segmenter_built_from_a_checkpoint_object_names_no_file(unet_file: Path) -> None:
    info = Segmenter(load_checkpoint(unet_file), device="cpu", precision="fp32").info
    assert (info.checkpoint_path, info.checkpoint_sha256) == (None, None)


@pytest.mark.parametrize("channels_last", [True, False])
def test_uint8_input_is_normalised_with_the_checkpoints_mean_and_std(unet_file: Path,
                                                                     channels_last: bool) -> None:
    checkpoint = load_checkpoint(unet_file)
    checkpoint.mean, checkpoint.std = (0.2, 0.5, 0.7), (0.3, 0.1, 0.25)
    segmenter = Segmenter(checkpoint, device="cpu", precision="fp32", channels_last=channels_last)
    batch = noise_batch((2, 3, 32, 32))
    mean = torch.tensor(checkpoint.mean).view(1, 3, 1, 1)
    std = torch.tensor(checkpoint.std).view(1, 3, 1, 1)
    reference = checkpoint.build_model().eval()
    with torch.inference_mode():
        expected = torch.sigmoid(reference((batch.float() / 255 - mean) / std))[:, 0]
    probabilities = segmenter.forward(batch)
    assert probabilities.shape == (2, 32, 32) and probabilities.dtype == torch.float32
    torch.testing.assert_close(probabilities, expected, atol=1e-6, rtol=0)
    # a float batch is taken as normalised already
    torch.testing.assert_close(segmenter.forward((batch.float() / 255 - mean) / std), expected, atol=1e-6,
                               rtol=0)


def test_warmup_runs_each_batch_size_once_and_says_so(unet_file: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    segmenter = Segmenter.from_file(unet_file, device="cpu", precision="fp32")
    shapes: list[tuple[int, ...]] = []
    real = segmenter.forward
    monkeypatch.setattr(segmenter, "forward", lambda batch: shapes.append(tuple(batch.shape)) or real(batch))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    with caplog.at_level(logging.INFO, logger="models.engine.segmenter"):
        seconds = segmenter.warmup((2, 1, 2))
    assert shapes == [(2, 3, 32, 32), (1, 3, 32, 32)]
    assert seconds > 0 and segmenter.info.compiled is False
    assert caplog.records[-1].getMessage().startswith("warm-up on cpu (fp32, eager, 1 thread) took ")


def test_warmup_noise_is_the_same_every_time_and_spans_the_byte_range() -> None:
    first, second = noise_batch((2, 3, 64, 64)), noise_batch((2, 3, 64, 64))
    assert first.dtype == torch.uint8 and first.shape == (2, 3, 64, 64)
    assert torch.equal(first, second)
    assert int(first.min()) == 0 and int(first.max()) == 255 and 120 < float(first.float().mean()) < 135
