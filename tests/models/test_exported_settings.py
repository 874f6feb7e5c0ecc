"""What the exported engine asks of ONNX Runtime and OpenVINO (threads, streams, providers, one session or
compiled model per thread count, one infer request per thread), checked against recorders in place of the
runtimes' objects: the behaviour the runtimes then give is in test_exported.py, which runs them for real."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.engine import exported
from models.engine.exported import ExportedSegmenter, _OnnxRuntime, _OpenVino
from models.engine.onnx_export import INPUT_NAME, OUTPUT_NAME


class FakeOrt:
    """The part of the onnxruntime module the engine uses: options objects and sessions, recorded."""

    GraphOptimizationLevel = SimpleNamespace(ORT_ENABLE_ALL="all")

    def __init__(self) -> None:
        self.sessions: list[tuple] = []

    def SessionOptions(self) -> SimpleNamespace:  # noqa: N802 - onnxruntime's name
        return SimpleNamespace()

    def InferenceSession(self, path: str, options: SimpleNamespace, **kwargs: object) -> object:  # noqa: N802
        self.sessions.append((path, vars(options), kwargs))
        runs: list = []
        return SimpleNamespace(runs=runs, run=lambda names, feed: runs.append((names, feed)) or [feed[INPUT_NAME] * 2])


def onnxruntime_backend(fake: FakeOrt) -> _OnnxRuntime:
    backend = _OnnxRuntime.__new__(_OnnxRuntime)
    backend._ort, backend._model_file = fake, "model.onnx"
    backend._sessions = exported._PerThreadCount(backend._session)
    return backend


def test_an_onnxruntime_session_uses_the_lanes_threads_and_the_cpu_provider() -> None:
    fake = FakeOrt()
    backend = onnxruntime_backend(fake)
    inputs = np.ones((1, 3, 4, 4), np.float32)
    np.testing.assert_array_equal(backend.run(inputs, 3), inputs * 2)
    backend.run(inputs, 3)
    backend.run(inputs, 1)
    assert fake.sessions == [
        ("model.onnx", {"graph_optimization_level": "all", "intra_op_num_threads": 3, "inter_op_num_threads": 1,
                        "log_severity_level": 3}, {"providers": ["CPUExecutionProvider"]}),
        ("model.onnx", {"graph_optimization_level": "all", "intra_op_num_threads": 1, "inter_op_num_threads": 1,
                        "log_severity_level": 3}, {"providers": ["CPUExecutionProvider"]}),
    ]  # one session per thread count, reused


def test_an_onnxruntime_pass_asks_for_the_probability_output_by_name() -> None:
    fake = FakeOrt()
    backend = onnxruntime_backend(fake)
    backend.run(np.zeros((1, 3, 2, 2), np.float32), 2)
    session = backend._sessions.get(2)
    (names, feed), = session.runs
    assert names == [OUTPUT_NAME] and list(feed) == [INPUT_NAME]


class FakeCompiled:
    def __init__(self, config: dict) -> None:
        self.config, self.requests = config, 0

    def create_infer_request(self) -> SimpleNamespace:
        self.requests += 1
        data = np.full((1, 1, 2, 2), float(self.requests), np.float32)
        tensor = SimpleNamespace(data=data)
        return SimpleNamespace(infer=lambda feed: None, get_output_tensor=lambda index: tensor, data=data)


def openvino_backend(monkeypatch: pytest.MonkeyPatch, cores: int) -> tuple[_OpenVino, list]:
    compiled: list = []

    def compile_model(model: object, device: str, config: dict) -> FakeCompiled:
        compiled.append((model, device, config))
        return FakeCompiled(config)

    monkeypatch.setattr(exported, "usable_cores", lambda: cores)
    backend = _OpenVino.__new__(_OpenVino)
    backend._core, backend._model = SimpleNamespace(compile_model=compile_model), "the model"
    backend._compiled = exported._PerThreadCount(backend._compile)
    backend._requests = threading.local()
    return backend, compiled


@pytest.mark.parametrize(("cores", "threads", "streams"), [(8, 1, 8), (8, 2, 4), (8, 3, 2), (8, 16, 1), (2, 0, 2)])
def test_openvino_fills_the_cores_with_streams_of_the_lanes_thread_count(monkeypatch: pytest.MonkeyPatch,
                                                                          cores: int, threads: int,
                                                                          streams: int) -> None:
    backend, compiled = openvino_backend(monkeypatch, cores)
    backend._compile(threads)
    assert compiled == [("the model", "CPU", {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * threads,
                                              "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False})]
    assert type(compiled[0][2]["NUM_STREAMS"]) is int


def test_openvino_keeps_one_infer_request_per_thread_and_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, compiled = openvino_backend(monkeypatch, 4)
    inputs = np.zeros((1, 3, 2, 2), np.float32)
    first = backend.run(inputs, 2)
    assert backend.run(inputs, 2)[0, 0, 0, 0] == first[0, 0, 0, 0] == 1.0  # the same request again
    assert backend.run(inputs, 1)[0, 0, 0, 0] == 1.0 and len(compiled) == 2  # another count: its own model
    other: list = []
    worker = threading.Thread(target=lambda: other.append(backend.run(inputs, 2)))
    worker.start()
    worker.join()
    assert other[0][0, 0, 0, 0] == 2.0 and len(compiled) == 2  # another thread: its own request, same model
    first[:] = 7  # the answer is a copy: the next pass cannot overwrite what a caller holds
    assert backend.run(inputs, 2)[0, 0, 0, 0] == 1.0


def segmenter_with(backend: object, image_size: int = 8) -> ExportedSegmenter:
    segmenter = ExportedSegmenter.__new__(ExportedSegmenter)
    segmenter.runtime, segmenter.precision, segmenter.device = "openvino", "int8", torch.device("cpu")
    segmenter.image_size, segmenter._backend, segmenter._scratch = image_size, backend, None
    segmenter.checkpoint = SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return segmenter


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def run(self, inputs: np.ndarray, threads: int) -> np.ndarray:
        self.calls.append((inputs.shape, inputs.dtype, threads))
        return np.zeros((inputs.shape[0], 1, *inputs.shape[2:]), np.float32)


@pytest.mark.parametrize(("threads", "word"), [(1, "1 thread)"), (2, "2 threads)")])
def test_warm_up_runs_each_batch_size_once_on_the_lanes_threads(threads: int, word: str,
                                                                caplog: pytest.LogCaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # the lane's count as models.engine.runtime reports it (setting torch's own would start a thread pool that a
    # process forked afterwards, as mutation testing does, cannot use)
    monkeypatch.setattr(exported, "intra_op_threads", lambda: threads)
    clock = iter([10.0, 12.5, 20.0, 20.25])  # a fake clock: the warm-up's duration is the difference
    monkeypatch.setattr(exported.time, "perf_counter", lambda: next(clock))
    backend = Recorder()
    segmenter = segmenter_with(backend)
    with caplog.at_level(logging.INFO, logger=exported.__name__):
        elapsed = segmenter.warmup((4, 1, 4))
    assert backend.calls == [((4, 3, 8, 8), np.float32, threads), ((1, 3, 8, 8), np.float32, threads)]
    assert elapsed == 2.5
    assert caplog.records[-1].getMessage() == f"warm-up on openvino cpu (int8, {word} took 2.50s"
    backend.calls.clear()
    segmenter.warmup()
    assert [call[0] for call in backend.calls] == [(1, 3, 8, 8)]


def test_a_scratch_folder_is_made_once_and_named_for_petseg() -> None:
    segmenter = segmenter_with(Recorder())
    folder = segmenter._scratch_dir()
    assert folder.is_dir() and folder.name.startswith("petseg-onnx-") and segmenter._scratch_dir() == folder


@pytest.mark.parametrize(("runtime", "precision", "message"), [
    ("tensorrt", "fp32", "unknown exported runtime 'tensorrt'; expected one of onnxruntime, openvino"),
    ("openvino", "bf16", "openvino runs fp32 or int8, not 'bf16'"),
])
def test_a_runtime_or_precision_it_cannot_run_is_refused_by_name(runtime: str, precision: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        ExportedSegmenter(SimpleNamespace(), runtime=runtime, precision=precision)  # type: ignore[arg-type]
    assert str(info.value) == message


# --- which ONNX file serves which precision: names in the cache, and what builds them --------------------------

class Builds:
    """Recorders in place of the export, the quantiser and the cache: what ``exported_model`` asks of each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache_writable: bool = True) -> None:
        import models.engine.quantize as quantize

        self.calls: list[tuple] = []
        self.folder = tmp_path
        monkeypatch.setattr(exported, "build_onnx", lambda checkpoint, checkpoint_sha256: ("onnx", checkpoint_sha256))
        monkeypatch.setattr(exported, "save_onnx", lambda model, path: self.calls.append(("export", model, path)))
        monkeypatch.setattr(exported, "cached_file",
                            lambda name, build: (build(tmp_path / name), tmp_path / name)[1] if cache_writable
                            else None)
        monkeypatch.setattr(quantize, "quantize_int8", lambda fp32, path, checkpoint, photos=(), *, ranges=None:
                            self.calls.append(("int8", fp32, path, checkpoint, tuple(photos), ranges)))
        monkeypatch.setattr(quantize, "calibration_source", lambda configured: Path(f"source-of-{configured}"))
        monkeypatch.setattr(quantize, "calibration_photos", lambda source: [source / "a.jpg", source / "b.jpg"])
        monkeypatch.setattr(quantize, "calibration_digest", lambda photos: "f" * 20 + str(len(photos)))


def tiny_checkpoint(ranges: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(arch="unet", int8_calibration=ranges)


KEY = "0123456789abcdef" * 4


def test_fp32_is_exported_once_under_the_checkpoints_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    builds = Builds(monkeypatch, tmp_path)
    with caplog.at_level(logging.INFO, logger=exported.__name__):
        path = exported.exported_model(tiny_checkpoint(), KEY, "fp32", None, scratch=lambda: tmp_path / "scratch")
    assert path == tmp_path / f"{KEY[:24]}-unet-v1-fp32.onnx"
    assert builds.calls == [("export", ("onnx", KEY), path)]
    assert "exporting unet to ONNX (once per checkpoint; tens of seconds on a small CPU)" in caplog.messages


def test_int8_from_the_ranges_a_checkpoint_carries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import models.engine.quantize as quantize

    builds = Builds(monkeypatch, tmp_path)
    carried = SimpleNamespace(digest="abcdef0123456789")
    monkeypatch.setattr(quantize.Int8Calibration, "from_dict", classmethod(lambda cls, raw: carried if raw else None))
    monkeypatch.delenv("PETSEG_CALIBRATION_DATA", raising=False)
    checkpoint = tiny_checkpoint({"ranges": 1})
    path = exported.exported_model(checkpoint, KEY, "int8", None, scratch=lambda: tmp_path / "scratch")
    fp32 = tmp_path / f"{KEY[:24]}-unet-v1-fp32.onnx"
    assert path == tmp_path / f"{KEY[:24]}-unet-v1-int8-ranges-abcdef012345.onnx"
    assert builds.calls[1] == ("int8", fp32, path, checkpoint, (), carried)
    # photos named (argument or environment) take precedence over the carried ranges
    photos = exported.exported_model(checkpoint, KEY, "int8", "pets", scratch=lambda: tmp_path / "scratch")
    assert photos == tmp_path / f"{KEY[:24]}-unet-v1-int8-{'f' * 12}.onnx"
    assert builds.calls[-1] == ("int8", fp32, photos, checkpoint,
                                (Path("source-of-pets/a.jpg"), Path("source-of-pets/b.jpg")), None)
    monkeypatch.setenv("PETSEG_CALIBRATION_DATA", "elsewhere")
    exported.exported_model(checkpoint, KEY, "int8", None, scratch=lambda: tmp_path / "scratch")
    assert builds.calls[-1][4] == (Path("source-of-None/a.jpg"), Path("source-of-None/b.jpg"))


def test_int8_without_carried_ranges_calibrates_on_photos(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    builds = Builds(monkeypatch, tmp_path)
    monkeypatch.delenv("PETSEG_CALIBRATION_DATA", raising=False)
    path = exported.exported_model(tiny_checkpoint(None), KEY, "int8", None, scratch=lambda: tmp_path / "scratch")
    assert path.name == f"{KEY[:24]}-unet-v1-int8-{'f' * 12}.onnx"
    assert builds.calls[-1][4] == (Path("source-of-None/a.jpg"), Path("source-of-None/b.jpg"))


def test_an_unwritable_cache_builds_in_the_scratch_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    builds = Builds(monkeypatch, tmp_path, cache_writable=False)
    scratch = tmp_path / "scratch"
    path = exported.exported_model(tiny_checkpoint(), KEY, "fp32", None, scratch=lambda: scratch)
    assert path == scratch / f"{KEY[:24]}-unet-v1-fp32.onnx" and builds.calls == [("export", ("onnx", KEY), path)]


def test_the_engine_reports_what_it_serves_and_how_long_it_took(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    asked: list = []
    monkeypatch.setattr(exported, "exported_model", lambda checkpoint, key, precision, calibration, scratch:
                        asked.append((key, precision, calibration)) or tmp_path / "model.onnx")
    monkeypatch.setattr(exported, "_OpenVino", lambda path, size: ("openvino", path, size))
    monkeypatch.setattr(exported, "_OnnxRuntime", lambda path: ("onnxruntime", path))
    monkeypatch.setattr(exported, "_folded_parameters", lambda checkpoint: 1234)
    clock = iter([5.0, 7.25, 8.0, 8.0])  # two engines, each timed once
    monkeypatch.setattr(exported.time, "perf_counter", lambda: next(clock))
    file = tmp_path / "tiny.pt"
    file.write_bytes(b"a checkpoint")
    checkpoint = SimpleNamespace(arch="unet", image_size=64, epoch=3, metrics={"val_dice": 0.9}, created_at="today",
                                 card={"data": "pets"}, weights_digest=lambda: "from-the-weights")
    with caplog.at_level(logging.INFO, logger=exported.__name__):
        engine = ExportedSegmenter(checkpoint, runtime="openvino", precision="int8",  # type: ignore[arg-type]
                                   checkpoint_path=file, calibration="pets")
    from models.checkpoint import file_sha256

    assert asked == [(file_sha256(file), "int8", "pets")]
    assert engine._backend == ("openvino", tmp_path / "model.onnx", 64)
    assert f"int8 model ready in 2.2s: {tmp_path / 'model.onnx'}" in caplog.messages
    info = engine.info
    assert (info.arch, info.parameters, info.device, info.precision, info.compiled, info.image_size,
            info.checkpoint_path, info.checkpoint_sha256, info.epoch, info.metrics, info.created_at, info.card,
            info.runtime) == ("unet", 1234, "cpu", "int8", False, 64, str(file), file_sha256(file), 3,
                              {"val_dice": 0.9}, "today", {"data": "pets"}, "openvino")
    unsaved = ExportedSegmenter(checkpoint, runtime="onnxruntime")  # type: ignore[arg-type]
    assert asked[-1] == ("from-the-weights", "fp32", None) and unsaved._backend[0] == "onnxruntime"
    assert unsaved.info.checkpoint_path is None and unsaved.info.checkpoint_sha256 is None
