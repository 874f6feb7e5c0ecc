"""Which runtime runs the model, and in which precision: ``PETSEG_RUNTIME`` / ``--runtime`` with ``--precision``.

``torch`` is the PyTorch engine (``models.inference.Segmenter``: fp32, bf16, fp16 on CUDA, optionally compiled);
``onnxruntime`` and ``openvino`` run the checkpoint's ONNX export (``models.exported``: fp32, or int8 calibrated
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

from models.inference import Segmenter, SegmenterBase, load_for_inference
from models.runtime import cpu_supports_bf16, resolve_device, resolve_precision

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


def auto_engine(device: torch.device, *, native_bf16: bool, installed: Collection[str],
                fastest_without_bf16: tuple[str, str] = ("torch", "auto")) -> EngineChoice:
    """The rule behind ``PETSEG_RUNTIME=auto``: GPUs and CPUs with native bf16 keep the PyTorch engine; on other CPUs,
    ``fastest_without_bf16`` (runtime, precision), when its package is installed.

    Based on ResNet34_UNet at 192x192, batch 1, all cores, each set from one run on its machine:
    - a 2-core Xeon with AMX/AVX512_BF16: the PyTorch engine in bf16, compiled, 7.8-8.4x plain PyTorch (no other
      runtime measured there); bf16 halves the bytes moved and AMX computes it natively, which neither ONNX Runtime's
      nor OpenVINO's fp32 paths match;
    - a 2-core AMD EPYC (Zen 3, AVX2, no AVX-512, no bf16): the compiled PyTorch engine 106.5 ms, ONNX Runtime fp32
      94.7, OpenVINO fp32 99.0; ONNX Runtime int8 (static QDQ, 40 calibration photos) 57.5 ms against 91.8 fp32 in
      its run, with the same validation Dice.
    So on CPUs without native bf16 the fastest measured path is ONNX Runtime int8, once its accuracy gate holds
    (tests/models/test_int8.py) and this project's bench (``bench/run.py``, runtime rows) confirms the speed in its
    own run. Until then the default keeps the PyTorch engine everywhere, as before these runtimes existed.
    """
    if device.type != "cpu":
        return EngineChoice("torch", "auto", f"{device.type}: the PyTorch engine (cuDNN)")
    if native_bf16:
        return EngineChoice("torch", "auto", "CPU with native bf16 (AVX512_BF16/AMX): PyTorch bf16 is fastest")
    runtime, precision = fastest_without_bf16
    if runtime != "torch" and runtime not in installed:
        return EngineChoice("torch", "auto", f"CPU without native bf16; {runtime} would be faster but is not "
                                             f"installed (pip install 'petseg[{_EXTRA[runtime]}]')")
    return EngineChoice(runtime, precision, "CPU without native bf16: the fastest measured path")


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
        for runtime in ("onnxruntime", "openvino"):
            if runtime in installed:
                return EngineChoice(runtime, "int8", "int8 asked for")
        raise ValueError("int8 needs the onnxruntime or openvino runtime: pip install 'petseg[onnx]'")
    choice = auto_engine(device, native_bf16=cpu_supports_bf16(), installed=installed)
    if precision == "auto":
        return choice
    if precision in ("bf16", "fp16"):
        return EngineChoice("torch", precision, f"{precision} asked for: the PyTorch engine")
    return EngineChoice(choice.runtime, precision, choice.reason)


def open_segmenter(path: str | os.PathLike[str], *, runtime: str = "auto", device: str = "auto",
                   precision: str = "auto", compile: str = "off", allow_untrained: bool = False,
                   calibration: str | os.PathLike[str] | None = None) -> SegmenterBase:
    """Load a checkpoint into the engine ``runtime`` and ``precision`` resolve to (see :func:`resolve_engine`).

    ``compile`` applies to the PyTorch engine; ``calibration`` (photos for int8) to the exported ones. An int8
    that ``auto`` chose falls back to fp32 when there are no calibration photos; one asked for fails."""
    choice = resolve_engine(runtime, precision, device)
    log.info("runtime %s, precision %s (%s)", choice.runtime, choice.precision, choice.reason)
    if choice.runtime == "torch":
        return Segmenter.from_file(path, device=device, precision=choice.precision, compile=compile,
                                   allow_untrained=allow_untrained)
    from models.exported import ExportedSegmenter
    from models.quantize import CalibrationError

    checkpoint = load_for_inference(path, allow_untrained=allow_untrained)
    try:
        return ExportedSegmenter(checkpoint, runtime=choice.runtime, precision=choice.precision,
                                 checkpoint_path=path, calibration=calibration)
    except CalibrationError as exc:
        if runtime.strip().lower() != "auto" or precision.strip().lower() != "auto":
            raise
        log.warning("%s; serving %s fp32 instead", exc, choice.runtime)
        return ExportedSegmenter(checkpoint, runtime=choice.runtime, precision="fp32", checkpoint_path=path)
