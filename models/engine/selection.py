"""Which runtime runs the model, and in which precision: ``PETSEG_RUNTIME`` / ``--runtime`` with ``--precision``.

``torch`` is the PyTorch engine (``models.engine.segmenter.Segmenter``: fp32, bf16, fp16 on CUDA, optionally compiled);
``onnxruntime`` and ``openvino`` run the checkpoint's ONNX export (``models.engine.exported``: fp32, or int8 calibrated
on training photos); ``auto`` applies :func:`auto_engine`. All of them offer the same interface, so the service,
``petseg-predict`` and ``petseg-evaluate`` take any.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass

import torch

from models.engine.runtime import cpu_has_amx, resolve_device, resolve_precision
from models.engine.segmenter import Segmenter, SegmenterBase, load_for_inference

__all__ = ["ENGINE_PRECISIONS", "RUNTIMES", "EngineChoice", "auto_engine", "installed_runtimes", "open_segmenter",
           "resolve_engine"]

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
ENGINE_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
_EXPORTED_PRECISIONS = ("fp32", "int8")
# What each exported runtime needs on top of its own package: the exporter (onnx, onnxscript) and, for int8, ONNX
# Runtime's quantisation tool.
_NEEDS = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
          "openvino": ("openvino", "onnx", "onnxscript", "onnxruntime")}
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}


@dataclass(frozen=True)
class EngineChoice:
    runtime: str
    precision: str  # as the runtime takes it: "auto" is left to the torch engine's own rule
    reason: str


def installed_runtimes() -> set[str]:
    """The runtimes whose packages are importable (torch always is)."""
    found = {"torch"}
    for runtime, modules in _NEEDS.items():
        if all(importlib.util.find_spec(module) is not None for module in modules):
            found.add(runtime)
    return found


def auto_engine(device: torch.device, *, amx: bool, installed: Collection[str],
                fastest_without_amx: tuple[str, str] = ("openvino", "int8")) -> EngineChoice:
    """The rule behind ``PETSEG_RUNTIME=auto``: GPUs and CPUs with AMX keep the PyTorch engine; other CPUs take
    ``fastest_without_amx`` (runtime, precision) when its package is installed.

    Measured with ResNet34_UNet at 192x192 on three 2-core CPU kinds (each line from one run on its machine; img/s):
    - Xeon with AMX: the PyTorch engine in bf16, compiled, 7.8-8.4x plain PyTorch (no other runtime measured there):
      AMX computes bf16 matrix tiles natively, which neither ONNX Runtime's nor OpenVINO's fp32 paths match.
    - AMD EPYC Zen 4 (AVX-512 with AVX512_BF16 and VNNI, no AMX): engines at batch 1, PyTorch bf16 28.2, ONNX
      Runtime fp32 13.0, OpenVINO int8 27.9; through the service at concurrency 4, OpenVINO int8 46.1 against
      PyTorch bf16 26.5 (1.74x): int8 with VNNI beats bf16 without AMX, and OpenVINO's streams suit the lanes.
    - AMD EPYC Zen 3 (AVX2 only, no bf16): plain PyTorch 5.28, PyTorch engine 7.64, ONNX Runtime fp32 8.57,
      ONNX Runtime int8 8.92, OpenVINO fp32 7.46, OpenVINO int8 15.11.
    int8 stays within the 0.005 Dice gate of fp32 on the validation photos (tests/models/test_int8.py). It needs
    activation ranges: the checkpoint's own (``petseg-export --calibration``; the embedded model carries them) or
    calibration photos; where there are neither, :func:`open_segmenter` falls back to the PyTorch engine.
    """
    if device.type != "cpu":
        return EngineChoice("torch", "auto", f"{device.type}: the PyTorch engine (cuDNN)")
    if amx:
        return EngineChoice("torch", "auto", "CPU with AMX: PyTorch bf16 is fastest")
    runtime, precision = fastest_without_amx
    if runtime != "torch" and runtime not in installed:
        return EngineChoice("torch", "auto", f"CPU without AMX; {runtime} {precision} would be faster but is not "
                                             f"installed (pip install 'petseg[{_EXTRA[runtime]}]')")
    return EngineChoice(runtime, precision, f"CPU without AMX: {runtime} {precision} is the fastest measured path")


def resolve_engine(runtime: str, precision: str, device: str | torch.device = "auto",
                   installed: Collection[str] | None = None) -> EngineChoice:
    """Validate a runtime and precision pair (``ValueError`` naming the problem) and apply ``auto``."""
    runtime, precision = runtime.strip().lower(), precision.strip().lower()
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if precision not in ENGINE_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(ENGINE_PRECISIONS)}")
    installed = installed_runtimes() if installed is None else installed
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    if runtime == "auto":
        choice = _auto_with_precision(resolved, precision, installed)
    else:
        choice = EngineChoice(runtime, precision, "asked for")
    if choice.runtime == "torch":
        if choice.precision == "int8":
            raise ValueError("int8 runs on the onnxruntime or openvino runtime (PETSEG_RUNTIME / --runtime)")
        resolve_precision(choice.precision, resolved)  # raises for fp16 on the CPU
        return choice
    if choice.runtime not in installed:
        raise ValueError(f"runtime {choice.runtime} needs {', '.join(_NEEDS[choice.runtime])}: "
                         f"pip install 'petseg[{_EXTRA[choice.runtime]}]'")
    if resolved.type != "cpu" and str(device).strip().lower() != "auto":
        raise ValueError(f"runtime {choice.runtime} runs on the CPU in this version, not on {resolved}; "
                         f"use the torch runtime on a GPU")
    exported_precision = "fp32" if choice.precision == "auto" else choice.precision
    if exported_precision not in _EXPORTED_PRECISIONS:
        raise ValueError(f"runtime {choice.runtime} runs fp32 or int8, not {exported_precision}")
    return EngineChoice(choice.runtime, exported_precision, choice.reason)


def _auto_with_precision(device: torch.device, precision: str, installed: Collection[str]) -> EngineChoice:
    """``auto`` runtime: the rule, unless the precision asked for decides (int8 and bf16/fp16 run on one side)."""
    if precision == "int8":
        for runtime in ("openvino", "onnxruntime"):  # OpenVINO's int8 measured faster on every CPU kind
            if runtime in installed:
                return EngineChoice(runtime, "int8", "int8 asked for")
        raise ValueError("int8 needs the onnxruntime or openvino runtime: pip install 'petseg[onnx]'")
    if precision != "auto":  # fp32, bf16 or fp16: the PyTorch engine, the reference
        return EngineChoice("torch", precision, f"{precision} asked for: the PyTorch engine")
    return auto_engine(device, amx=cpu_has_amx(), installed=installed)


def open_segmenter(path: str | os.PathLike[str], *, runtime: str = "auto", device: str = "auto",
                   precision: str = "auto", compile: str = "off", allow_untrained: bool = False,
                   calibration: str | os.PathLike[str] | None = None) -> SegmenterBase:
    """Load a checkpoint into the engine ``runtime`` and ``precision`` resolve to (see :func:`resolve_engine`).

    ``compile`` applies to the PyTorch engine; ``calibration`` (photos for int8) to the exported ones. An int8
    that ``auto`` chose falls back to the PyTorch engine when there are neither calibration photos nor ranges in
    the checkpoint; one asked for fails."""
    choice = resolve_engine(runtime, precision, device)
    log.info("runtime %s, precision %s (%s)", choice.runtime, choice.precision, choice.reason)
    if choice.runtime == "torch":
        return Segmenter.from_file(path, device=device, precision=choice.precision, compile=compile,
                                   allow_untrained=allow_untrained)
    from models.engine.exported import ExportedSegmenter
    from models.engine.quantize import CalibrationError, check_int8_possible

    checkpoint = load_for_inference(path, allow_untrained=allow_untrained)
    chosen_by_auto = runtime.strip().lower() == "auto" and precision.strip().lower() == "auto"
    try:
        if choice.precision == "int8":
            check_int8_possible(checkpoint, calibration)  # before the export, which takes tens of seconds
        return ExportedSegmenter(checkpoint, runtime=choice.runtime, precision=choice.precision,
                                 checkpoint_path=path, calibration=calibration)
    except CalibrationError as exc:
        if not chosen_by_auto:
            raise
        log.warning("%s; running on the PyTorch engine instead", exc)
        return Segmenter.from_file(path, device=device, precision="auto", compile=compile,
                                   allow_untrained=allow_untrained)
