"""``PETSEG_RUNTIME`` / ``--runtime`` with ``--precision``: validation, and the rule behind ``auto``."""
from __future__ import annotations

import pytest
import torch

from models.engines import auto_engine, installed_runtimes, resolve_engine

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
ALL = {"torch", "onnxruntime", "openvino"}


def test_auto_keeps_the_torch_engine_on_gpus_and_on_cpus_with_native_bf16() -> None:
    faster = ("onnxruntime", "int8")
    assert auto_engine(CUDA, native_bf16=False, installed=ALL, fastest_without_bf16=faster).runtime == "torch"
    choice = auto_engine(CPU, native_bf16=True, installed=ALL, fastest_without_bf16=faster)
    assert (choice.runtime, choice.precision) == ("torch", "auto")
    assert "native bf16" in choice.reason


def test_auto_takes_the_fastest_measured_path_on_cpus_without_bf16_when_installed() -> None:
    choice = auto_engine(CPU, native_bf16=False, installed=ALL, fastest_without_bf16=("onnxruntime", "int8"))
    assert (choice.runtime, choice.precision) == ("onnxruntime", "int8")


def test_auto_falls_back_to_torch_when_the_faster_runtime_is_not_installed() -> None:
    choice = auto_engine(CPU, native_bf16=False, installed={"torch"}, fastest_without_bf16=("openvino", "int8"))
    assert choice.runtime == "torch"
    assert "petseg[openvino]" in choice.reason


def test_auto_keeps_todays_behaviour_until_measured() -> None:
    choice = resolve_engine("auto", "auto", "cpu", installed=ALL)
    assert (choice.runtime, choice.precision) == ("torch", "auto")


@pytest.mark.parametrize(("runtime", "precision", "expected"), [
    ("onnxruntime", "auto", ("onnxruntime", "fp32")),
    (" OpenVINO ", "INT8", ("openvino", "int8")),
    ("auto", "int8", ("onnxruntime", "int8")),
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
