"""``PETSEG_RUNTIME`` / ``--runtime`` with ``--precision``: validation, and the rule behind ``auto``."""
from __future__ import annotations

import pytest
import torch

from models.engine.selection import auto_engine, installed_runtimes, resolve_engine

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
