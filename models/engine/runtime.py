"""Device and precision choices shared by training and inference: check the hardware, never assume it."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from models.host import usable_cores  # here too: the engine's users ask for it beside the threads

__all__ = ["COMPILE_MODES", "PRECISIONS", "autocast", "cpu_has_amx", "cpu_supports_bf16", "dtype_of",
           "has_cpp_compiler", "intra_op_threads", "keep_freed_memory", "resolve_compile", "resolve_device",
           "resolve_precision", "usable_cores", "use_intra_op_threads"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("auto", "on", "off")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` takes the first GPU when there is one; ``cuda`` / ``cuda:N`` must exist."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; expected auto, cpu, cuda or cuda:N")
    return device


_lane = threading.local()


def use_intra_op_threads(count: int) -> None:
    """Run this thread's forward passes on ``count`` threads: torch's OpenMP count, and the count the exported
    runtimes (ONNX Runtime, OpenVINO) read with :func:`intra_op_threads`. torch may re-initialise a thread's OpenMP
    count from the process-wide one at its first kernel, so the exported runtimes do not rely on it."""
    _lane.threads = count
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def intra_op_threads() -> int:
    """The count :func:`use_intra_op_threads` set on this thread, else torch's for it."""
    return getattr(_lane, "threads", None) or torch.get_num_threads()


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles for bf16 (Xeon Sapphire Rapids and later), where bf16 matrix work is fastest."""
    return "amx_bf16" in _cpu_flags() and cpu_supports_bf16()


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512_BF16 or AMX), so bf16 autocast is a speed-up."""
    native = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    mkldnn_ok = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return native and mkldnn_ok


def resolve_precision(precision: str, device: torch.device, *, training: bool = False) -> str:
    """Turn ``auto`` into the fastest correct dtype for the device; validate forced choices."""
    precision = precision.strip().lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "fp16":
        raise ValueError("fp16 autocast is only offered on CUDA; use bf16 or fp32 on the CPU")
    if precision == "auto":
        # Training on the CPU stays fp32 unless asked (--amp bf16); inference takes bf16 where it is native.
        return "bf16" if (not training and cpu_supports_bf16()) else "fp32"
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def dtype_of(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def has_cpp_compiler() -> bool:
    """``torch.compile`` on the CPU writes C++ and builds it: it needs the compiler inductor would call."""
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in candidates)


def resolve_compile(mode: str, device: torch.device) -> bool:
    """Whether to ``torch.compile`` the inference model.

    ``auto`` compiles on the CPU when a C++ compiler is installed (measured: 1.2x to 1.7x per forward here,
    from fusing ReLU into the oneDNN convolutions and pre-packing the weights). On CUDA ``auto`` stays eager:
    cuDNN with channels_last is already fast and compiling there has not been measured by this project;
    ``on`` forces it anywhere.
    """
    mode = mode.strip().lower()
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; expected one of {', '.join(COMPILE_MODES)}")
    if mode == "auto":
        return device.type == "cpu" and has_cpp_compiler()
    return mode == "on"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, from glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's upper limit on 64-bit
_TRIM_THRESHOLD_BYTES = 512 << 20


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Have glibc keep freed activation buffers for reuse instead of handing them back to the OS.

    By default glibc serves blocks above a moving threshold with a fresh ``mmap`` and trims the heap as soon as
    its top is free, so each UNet forward pass can page-fault tens of megabytes of new zeroed memory. Measured
    (UNet, 256x256, compiled, on a fresh process's worker thread as the service runs it): 42 to 54 ms a forward
    pass by default, 39 to 40 ms with fixed thresholds. Process-wide and idempotent; False where the C library is
    not glibc. The cost: memory freed after a peak stays with the process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    applied = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1 and applied
    log.debug("glibc malloc thresholds %s", "fixed" if applied else "left as they were")
    return applied
