"""``PETSEG_RUNTIME`` / ``--runtime`` with ``--precision``: validation, and the rule behind ``auto``."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointError
from models.engine import selection
from models.engine.quantize import CalibrationError
from models.engine.segmenter import Segmenter
from models.engine.selection import (
    EngineChoice,
    auto_engine,
    installed_runtimes,
    open_segmenter,
    resolve_engine,
)
from tests.factories import make_checkpoint

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
ALL = {"torch", "onnxruntime", "openvino"}


def test_auto_keeps_the_torch_engine_on_gpus_and_on_cpus_with_amx() -> None:
    assert auto_engine(CUDA, amx=False, installed=ALL).runtime == "torch"
    choice = auto_engine(CPU, amx=True, installed=ALL)
    assert (choice.runtime, choice.precision) == ("torch", "auto")
    assert "AMX" in choice.reason


def test_auto_takes_openvino_int8_on_cpus_without_amx() -> None:
    choice = auto_engine(CPU, amx=False, installed=ALL)
    assert (choice.runtime, choice.precision) == ("openvino", "int8")
    assert "without AMX" in choice.reason


def test_auto_falls_back_to_torch_when_the_faster_runtime_is_not_installed() -> None:
    choice = auto_engine(CPU, amx=False, installed={"torch", "onnxruntime"})
    assert choice.runtime == "torch"
    assert "petseg[openvino]" in choice.reason


@pytest.mark.parametrize(("amx", "expected"), [(True, ("torch", "auto")), (False, ("openvino", "int8"))])
def test_auto_follows_the_cpu(amx: bool, expected: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("models.engine.selection.cpu_has_amx", lambda: amx)
    choice = resolve_engine("auto", "auto", "cpu", installed=ALL)
    assert (choice.runtime, choice.precision) == expected


def test_int8_asked_for_with_auto_runtime_prefers_openvino_then_onnxruntime() -> None:
    assert resolve_engine("auto", "int8", "cpu", installed=ALL).runtime == "openvino"
    assert resolve_engine("auto", "int8", "cpu", installed={"torch", "onnxruntime"}).runtime == "onnxruntime"


@pytest.mark.parametrize(("runtime", "precision", "expected"), [
    ("onnxruntime", "auto", ("onnxruntime", "fp32")),
    (" OpenVINO ", "INT8", ("openvino", "int8")),
    ("auto", "int8", ("openvino", "int8")),
    ("auto", "fp32", ("torch", "fp32")),
    ("torch", "fp32", ("torch", "fp32")),
])
def test_explicit_choices_resolve(runtime: str, precision: str, expected: tuple[str, str]) -> None:
    choice = resolve_engine(runtime, precision, "cpu", installed=ALL)
    assert (choice.runtime, choice.precision) == expected


def test_auto_runtime_with_bf16_asked_is_the_torch_engine() -> None:
    choice = resolve_engine("auto", "bf16", "cpu", installed=ALL)
    assert (choice.runtime, choice.precision) == ("torch", "bf16")


@pytest.mark.parametrize(("runtime", "precision", "installed", "message"), [
    ("tensorrt", "auto", ALL, "unknown runtime 'tensorrt'"),
    ("torch", "int4", ALL, "unknown precision 'int4'"),
    ("torch", "int8", ALL, "int8 runs on the onnxruntime or openvino runtime"),
    ("onnxruntime", "bf16", ALL, "runs fp32 or int8, not bf16"),
    ("onnxruntime", "fp32", {"torch"}, r"pip install 'petseg\[onnx\]'"),
    ("openvino", "fp32", {"torch", "onnxruntime"}, r"pip install 'petseg\[openvino\]'"),
    ("auto", "int8", {"torch"}, "int8 needs the onnxruntime or openvino runtime"),
    ("torch", "fp16", ALL, "only offered on CUDA"),
])
def test_bad_pairs_are_clear_errors(runtime: str, precision: str, installed: set[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_engine(runtime, precision, "cpu", installed=installed)


def test_installed_runtimes_always_include_torch() -> None:
    assert "torch" in installed_runtimes()


# --- each choice's words, and open_segmenter (found loose by mutation testing) -----------------------------

@pytest.mark.parametrize(("device", "amx", "installed", "fastest", "expected"), [
    (CUDA, False, ALL, ("openvino", "int8"),
     EngineChoice("torch", "auto", "cuda: the PyTorch engine (cuDNN)")),
    (CPU, True, ALL, ("openvino", "int8"),
     EngineChoice("torch", "auto", "CPU with AMX: PyTorch bf16 is fastest")),
    (CPU, False, {"torch"}, ("openvino", "int8"),
     EngineChoice("torch", "auto", "CPU without AMX; openvino int8 would be faster but is not installed "
                                   "(pip install 'petseg[openvino]')")),
    (CPU, False, set(), ("torch", "bf16"),
     EngineChoice("torch", "bf16", "CPU without AMX: torch bf16 is the fastest measured path")),
])
def test_auto_engine_says_why(device: torch.device, amx: bool, installed: set[str], fastest: tuple[str, str],
                              expected: EngineChoice) -> None:
    assert auto_engine(device, amx=amx, installed=installed, fastest_without_amx=fastest) == expected


@pytest.mark.parametrize(("runtime", "precision", "expected"), [
    ("torch", "fp32", EngineChoice("torch", "fp32", "asked for")),
    ("onnxruntime", "auto", EngineChoice("onnxruntime", "fp32", "asked for")),
    ("auto", "int8", EngineChoice("openvino", "int8", "int8 asked for")),
    ("auto", "bf16", EngineChoice("torch", "bf16", "bf16 asked for: the PyTorch engine")),
])
def test_resolved_choices_keep_their_reason(runtime: str, precision: str, expected: EngineChoice) -> None:
    assert resolve_engine(runtime, precision, "cpu", installed=ALL) == expected


@pytest.mark.parametrize(("runtime", "precision", "installed", "message"), [
    ("tensorrt", "auto", ALL,
     "unknown runtime 'tensorrt'; expected one of auto, torch, onnxruntime, openvino"),
    ("torch", "int4", ALL, "unknown precision 'int4'; expected one of auto, fp32, bf16, fp16, int8"),
    ("torch", "int8", ALL, "int8 runs on the onnxruntime or openvino runtime (PETSEG_RUNTIME / --runtime)"),
    ("onnxruntime", "fp32", {"torch"}, "runtime onnxruntime needs onnxruntime, onnx, onnxscript: "
                                       "pip install 'petseg[onnx]'"),
    ("auto", "int8", {"torch"}, "int8 needs the onnxruntime or openvino runtime: pip install 'petseg[onnx]'"),
])
def test_refusals_are_whole_sentences(runtime: str, precision: str, installed: set[str],
                                      message: str) -> None:
    with pytest.raises(ValueError) as error:
        resolve_engine(runtime, precision, "cpu", installed=installed)
    assert str(error.value) == message


def test_an_exported_runtime_on_an_explicit_gpu_is_refused() -> None:
    with pytest.raises(ValueError) as error:
        resolve_engine("openvino", "fp32", CUDA, installed=ALL)
    assert str(error.value) == ("runtime openvino runs on the CPU in this version, not on cuda; "
                                "use the torch runtime on a GPU")


def test_an_exported_runtime_with_device_auto_runs_on_the_cpu_even_beside_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "resolve_device", lambda name: CUDA)  # a machine with a GPU
    assert resolve_engine("openvino", "fp32", " Auto ", installed=ALL) == EngineChoice("openvino", "fp32",
                                                                                       "asked for")


def test_without_a_list_the_installed_runtimes_are_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "installed_runtimes", lambda: {"torch"})
    with pytest.raises(ValueError, match="needs onnxruntime"):
        resolve_engine("onnxruntime", "fp32", "cpu")


def test_a_runtime_counts_as_installed_only_with_every_package_it_needs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    missing: set[str] = set()
    monkeypatch.setattr(selection.importlib.util, "find_spec",
                        lambda name: None if name in missing else object())
    assert installed_runtimes() == {"torch", "onnxruntime", "openvino"}
    missing.add("openvino")
    assert installed_runtimes() == {"torch", "onnxruntime"}
    missing.add("onnxscript")
    assert installed_runtimes() == {"torch"}


@pytest.fixture
def no_calibration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No calibration photos anywhere: int8 is possible only with ranges carried by the checkpoint."""
    monkeypatch.delenv("PETSEG_CALIBRATION_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # the default folder, dataset/oxford-iiit-pet, is relative
    monkeypatch.setattr(selection, "installed_runtimes", lambda: ALL)
    monkeypatch.setattr(selection, "cpu_has_amx", lambda: False)


def test_open_segmenter_gives_the_torch_engine_its_precision(tiny_checkpoint: Path) -> None:
    segmenter = open_segmenter(tiny_checkpoint, runtime="torch", device="cpu", precision="fp32")
    assert isinstance(segmenter, Segmenter) and segmenter.precision == "fp32"


def test_int8_chosen_by_auto_falls_back_to_torch_without_ranges_or_photos(
        tiny_checkpoint: Path, no_calibration: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.engine.selection"):
        segmenter = open_segmenter(tiny_checkpoint, runtime="auto", device="cpu", precision="auto")
    assert isinstance(segmenter, Segmenter)
    assert "running on the PyTorch engine instead" in caplog.text


def test_int8_asked_for_without_ranges_or_photos_is_an_error(tiny_checkpoint: Path,
                                                              no_calibration: None) -> None:
    with pytest.raises(CalibrationError):
        open_segmenter(tiny_checkpoint, runtime="openvino", device="cpu", precision="int8")


def test_open_segmenter_refuses_an_untrained_checkpoint_unless_allowed(tmp_path: Path) -> None:
    untrained = make_checkpoint(tmp_path / "random.pt", epoch=0, image_size=32)
    with pytest.raises(CheckpointError, match="untrained"):
        open_segmenter(untrained, runtime="torch", device="cpu")  # the default precision is auto
    allowed = open_segmenter(untrained, runtime="torch", device="cpu", allow_untrained=True)
    assert isinstance(allowed, Segmenter)


def test_int8_asked_for_with_the_auto_runtime_is_an_error_too(tiny_checkpoint: Path,
                                                               no_calibration: None) -> None:
    """Only a choice left wholly to auto (runtime and precision) may fall back."""
    with pytest.raises(CalibrationError):
        open_segmenter(tiny_checkpoint, runtime="auto", device="cpu", precision="int8")
