"""The PyTorch engine on its own: what it reports about itself, how it normalises, and its warm-up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.checkpoint import CheckpointError, file_sha256, load_checkpoint
from models.engine import runtime
from models.engine.segmenter import Segmenter, SegmenterBase, load_for_inference, noise_batch
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


def test_warmup_counts_threads_in_the_plural_and_returns_its_own_duration(
        unet_file: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    segmenter = Segmenter.from_file(unet_file, device="cpu", precision="fp32")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="models.engine.segmenter"):
        seconds = segmenter.warmup((1,))
    assert 0 < seconds <= time.perf_counter() - started
    assert caplog.records[-1].getMessage().startswith("warm-up on cpu (fp32, eager, 2 threads) took ")


def test_the_model_is_folded_and_held_in_the_compute_dtype_and_layout(unet_file: Path) -> None:
    checkpoint = load_checkpoint(unet_file)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in checkpoint.build_model().modules())
    segmenter = Segmenter(checkpoint, device="cpu", precision="fp32")
    assert segmenter.checkpoint is checkpoint
    assert segmenter.dtype == torch.float32 and segmenter.channels_last is True
    assert 0 < segmenter.folded_batchnorms <= batchnorms
    convs = [m.weight for m in segmenter.model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.dtype == torch.float32 for w in convs)
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    plain = Segmenter(checkpoint, device="cpu", precision="fp32", channels_last=False)
    assert plain.channels_last is False
    assert all(m.weight.is_contiguous() for m in plain.model.modules() if isinstance(m, nn.Conv2d))


def test_untrained_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    untrained = make_checkpoint(tmp_path / "untrained.pt", arch="unet", image_size=32, epoch=0)
    for load in (load_for_inference, Segmenter.from_file):
        with pytest.raises(CheckpointError, match=r"untrained\.pt holds untrained weights \(epoch 0\); refusing"):
            load(untrained)
    assert load_for_inference(untrained, allow_untrained=True).epoch == 0
    assert Segmenter.from_file(untrained, device="cpu", allow_untrained=True).info.epoch == 0


# --- the compile path, with torch.compile replaced by a recorder --------------------------------------------
# Compiling for real takes minutes (tests/models/test_compile.py does it); these check the engine's own logic:
# which batches run compiled, what a failure does, what is reported.

class _FakeCompile:
    """Stands in for ``torch.compile``: records how it was called and returns a callable that runs the model,
    records the batch shapes it ran, and fails as a missing toolchain does when ``fail`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[nn.Module, dict]] = []
        self.shapes: list[tuple[int, ...]] = []
        self.fail = False

    def __call__(self, model: nn.Module, **kwargs: object):  # noqa: ANN204
        self.calls.append((model, kwargs))

        def compiled(batch: torch.Tensor) -> torch.Tensor:
            if self.fail:
                raise RuntimeError("no C++ compiler found\nthe rest of inductor's report")
            self.shapes.append(tuple(batch.shape))
            return model(batch)
        return compiled


@pytest.fixture
def fake_compile(monkeypatch: pytest.MonkeyPatch) -> _FakeCompile:
    fake = _FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setattr(runtime, "has_cpp_compiler", lambda: True)
    return fake


def test_compile_on_runs_the_warmed_batch_sizes_compiled_and_others_eager(
        unet_file: Path, fake_compile: _FakeCompile, caplog: pytest.LogCaptureFixture) -> None:
    segmenter = Segmenter.from_file(unet_file, device="cpu", precision="fp32", compile=" ON ")
    assert fake_compile.calls == [(segmenter.model, {"dynamic": False})]
    assert segmenter.compiled is False and fake_compile.shapes == []
    with caplog.at_level(logging.INFO, logger="models.engine.segmenter"):
        segmenter.warmup((2, 1, 2))
    one, two = (1, 3, 32, 32), (2, 3, 32, 32)
    assert fake_compile.shapes == [two, two, one, one]  # each size: compiled once, then run
    assert segmenter.compiled is True and segmenter.info.compiled is True
    assert caplog.records[-1].getMessage().startswith("warm-up on cpu (fp32, compiled, ")
    batch = noise_batch((3, 3, 32, 32))
    eager = segmenter.forward(batch)  # a batch size never compiled runs eager
    assert fake_compile.shapes == [two, two, one, one]
    torch.testing.assert_close(segmenter.forward(batch[:1]), eager[:1], atol=1e-5, rtol=0)
    assert fake_compile.shapes[-1] == one
    segmenter.warmup((1,))  # again, as a lane's thread does: compiled already, so only run
    assert fake_compile.shapes[-2:] == [one, one] and fake_compile.shapes.count(one) == 4


def test_compile_auto_compiles_where_a_compiler_is_found(unet_file: Path, fake_compile: _FakeCompile) -> None:
    Segmenter.from_file(unet_file, device="cpu", precision="fp32", compile="auto")
    assert len(fake_compile.calls) == 1


def test_compile_off_never_compiles_nor_warns(unet_file: Path, fake_compile: _FakeCompile,
                                              caplog: pytest.LogCaptureFixture) -> None:
    segmenter = Segmenter.from_file(unet_file, device="cpu", precision="fp32")
    with caplog.at_level(logging.INFO, logger="models.engine.segmenter"):
        segmenter.warmup((1,))
    assert fake_compile.calls == [] and segmenter.compiled is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failed_compile_under_auto_serves_the_eager_model_with_a_warning(
        unet_file: Path, fake_compile: _FakeCompile, caplog: pytest.LogCaptureFixture) -> None:
    fake_compile.fail = True
    segmenter = Segmenter.from_file(unet_file, device="cpu", precision="fp32", compile="auto")
    with caplog.at_level(logging.INFO, logger="models.engine.segmenter"):
        segmenter.warmup((1,))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["torch.compile failed (no C++ compiler found); serving the eager model"]
    assert segmenter.compiled is False and segmenter.info.compiled is False
    assert segmenter.forward(noise_batch((1, 3, 32, 32))).shape == (1, 32, 32)


def test_a_failed_compile_when_forced_is_an_error(unet_file: Path, fake_compile: _FakeCompile) -> None:
    fake_compile.fail = True
    segmenter = Segmenter.from_file(unet_file, device="cpu", precision="fp32", compile="on")
    with pytest.raises(RuntimeError, match=r"^torch.compile failed for batch 1: no C\+\+ compiler found$"):
        segmenter.warmup((1,))


# --- predict_batch's own work, with a model that answers a fixed map -------------------------------------------

class _FixedMapEngine(SegmenterBase):
    image_size = 8

    def __init__(self, prob: np.ndarray) -> None:
        self.prob = prob

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.prob] * len(batch)))


def _two_blobs() -> np.ndarray:
    prob = np.zeros((8, 8), np.float32)
    prob[:4, :4] = 0.9  # 16 pixels
    prob[7, 7] = 0.6  # one pixel: a region only at thresholds under 0.6
    return prob


@pytest.mark.parametrize(("threshold", "small_blob_kept"), [(0.5, False), (0.7, True)])
def test_the_blob_filter_cuts_at_the_engines_blob_threshold(threshold: float, small_blob_kept: bool) -> None:
    engine = _FixedMapEngine(_two_blobs())
    engine.min_blob_ratio, engine.blob_threshold = 0.5, threshold
    prob = engine.predict(np.zeros((8, 8, 3), np.uint8))
    assert prob[7, 7] == pytest.approx(0.6 if small_blob_kept else 0.0)
    assert prob[0, 0] == pytest.approx(0.9)


def test_predict_batch_refuses_output_sizes_that_do_not_match_the_images() -> None:
    engine = _FixedMapEngine(_two_blobs())
    with pytest.raises(ValueError, match="zip"):
        engine.predict_batch([np.zeros((8, 8, 3), np.uint8)] * 2, [(8, 8)])


def test_a_map_already_at_the_asked_size_is_returned_as_is() -> None:
    prob = np.random.default_rng(0).random((6, 8), dtype=np.float32)  # 8 wide, 6 high
    assert SegmenterBase.resize_probability(prob, (8, 6)) is prob
    assert SegmenterBase.resize_probability(prob, (6, 8)).shape == (8, 6)


def test_defaults_pick_the_device_and_precision_for_this_machine(unet_file: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    expected = (str(runtime.resolve_device("auto")), runtime.resolve_precision("auto", runtime.resolve_device("auto")))
    for segmenter in (Segmenter(load_checkpoint(unet_file)), Segmenter.from_file(unet_file)):
        assert (str(segmenter.device), segmenter.precision) == expected
    if not torch.cuda.is_available():
        assert torch.backends.cudnn.benchmark is False  # a CUDA-only switch, left alone elsewhere
