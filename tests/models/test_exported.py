"""The ONNX Runtime and OpenVINO engines: the same interface and the same probabilities as the PyTorch engine,
the exported model cached by the checkpoint's sha256, one session per thread count."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import file_sha256, load_checkpoint
from models.engine.runtime import use_intra_op_threads
from models.engine.segmenter import Segmenter
from models.engine.selection import installed_runtimes, open_segmenter
from tests.factories import blob_image

pytestmark = pytest.mark.usefixtures("export_cache")
RUNTIMES = [pytest.param(name, marks=pytest.mark.skipif(name not in installed_runtimes(),
                                                        reason=f"{name} is not installed"))
            for name in ("onnxruntime", "openvino")]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> Segmenter:
    return Segmenter(load_checkpoint(tiny_checkpoint), device="cpu", precision="fp32")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exported_engine_predicts_what_torch_predicts(runtime: str, tiny_checkpoint: Path,
                                                      reference: Segmenter) -> None:
    engine = open_segmenter(tiny_checkpoint, runtime=runtime, precision="fp32")
    assert (engine.runtime, engine.precision, engine.device.type) == (runtime, "fp32", "cpu")
    assert (engine.info.runtime, engine.info.precision) == (runtime, "fp32")
    assert engine.info.parameters == reference.info.parameters
    assert engine.info.checkpoint_sha256 == file_sha256(tiny_checkpoint)
    engine.warmup((1, 2))
    images = [blob_image(70 + 11 * i, 50 + 9 * i, seed=i)[0] for i in range(3)]
    got, expected = engine.predict_batch(images), reference.predict_batch(images)
    assert [p.shape for p in got] == [(50, 70), (59, 81), (68, 92)]
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, expected, strict=True)) <= 1e-3
    pixels = torch.stack([engine.preprocess(image) for image in images])
    normalised = torch.randn(2, 3, engine.image_size, engine.image_size)
    torch.testing.assert_close(engine.forward(pixels), reference.forward(pixels), atol=1e-3, rtol=0)
    torch.testing.assert_close(engine.forward(normalised), reference.forward(normalised), atol=1e-3, rtol=0)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exported_engine_runs_each_lane_with_its_own_thread_count(runtime: str, tiny_checkpoint: Path,
                                                                  reference: Segmenter) -> None:
    engine = open_segmenter(tiny_checkpoint, runtime=runtime, precision="fp32")
    batch = engine.preprocess(blob_image(64, 64)[0])[None]
    results: dict[int, torch.Tensor] = {}

    def lane(threads: int) -> None:
        use_intra_op_threads(threads)  # as app.batching sets it on each model lane
        engine.warmup((1,))
        results[threads] = engine.forward(batch)

    workers = [threading.Thread(target=lane, args=(threads,)) for threads in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(engine._backend._sessions._built if runtime == "onnxruntime"  # type: ignore[attr-defined]
                  else engine._backend._compiled._built) == [1, 2]  # type: ignore[attr-defined]
    expected = reference.forward(batch)
    for result in results.values():
        torch.testing.assert_close(result, expected, atol=1e-3, rtol=0)


def test_the_export_is_cached_by_checkpoint_sha256_and_reused(tiny_checkpoint: Path, export_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    open_segmenter(tiny_checkpoint, runtime="onnxruntime", precision="fp32")
    # the session's cache may hold other tests' exports (int8 runs export fp32 first): look for this one's
    cached = sorted(export_cache.glob(f"{file_sha256(tiny_checkpoint)[:24]}*-fp32.onnx"))
    assert len(cached) == 1

    def no_export(*_: object, **__: object) -> None:
        raise AssertionError("exported again although the cache holds the model")

    monkeypatch.setattr("models.engine.exported.build_onnx", no_export)
    again = open_segmenter(tiny_checkpoint, runtime="onnxruntime", precision="fp32")
    assert again.predict(blob_image(40, 30)[0]).shape == (30, 40)


def test_an_unwritable_cache_builds_in_memory(tiny_checkpoint: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("PETSEG_CACHE_DIR", str(blocked / "cache"))
    engine = open_segmenter(tiny_checkpoint, runtime="onnxruntime", precision="fp32")
    assert engine.predict(blob_image(40, 30)[0]).shape == (30, 40)
    assert blocked.read_text() == ""


def test_an_untrained_checkpoint_is_refused_by_every_runtime(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from models.checkpoint import CheckpointError
    from tests.factories import make_checkpoint

    untrained = make_checkpoint(tmp_path / "epoch0.pt", epoch=0)
    with pytest.raises(CheckpointError, match="untrained"):
        open_segmenter(untrained, runtime="onnxruntime")
