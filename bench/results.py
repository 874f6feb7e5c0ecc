"""What the benchmark measures and keeps: the budgets, the timings and the reports (plain dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bench.common import Machine

SECTIONS = ("baseline", "engine", "runtimes", "service", "train")
EXPORTED_PATHS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"))
CALIBRATION_PHOTOS = 8  # synthetic: enough for the int8 graph to be what a real calibration gives
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PHOTO_SIZES = {"500x375": (500, 375), "4000x3000": (4000, 3000)}
SMALL_PHOTO = "500x375"


@dataclass(frozen=True)
class Budget:
    """How much work each measurement may do: counts are upper bounds, seconds cut them short."""

    warmup: int = 2
    iters: int = 20
    max_s: float = 12.0
    engine_batch: int = 4
    service_requests: int = 150
    service_max_s: float = 30.0
    concurrency: tuple[int, ...] = (1, 4, 16)
    train_batch: int = 8
    train_iters: int = 6
    train_max_s: float = 30.0
    batch_wait_ms: float = 5.0
    service_env: tuple[tuple[str, str], ...] = ()  # PETSEG_* settings for the service (default: none, as shipped)


DEFAULT = Budget()
QUICK = Budget(warmup=1, iters=4, max_s=4.0, engine_batch=2, service_requests=6, service_max_s=8.0,
               concurrency=(1, 4), train_batch=2, train_iters=2, train_max_s=8.0)
QUICK_SIZE = 128


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Timing:
    """Images per second from the median of timed calls of ``batch`` images each. ``cores_used`` is process
    CPU time over wall time while timing: ~1 means one core did the work, ~N means N cores did."""

    batch: int
    precision: str
    images_per_s: float
    median_ms: float
    iterations: int
    cores_used: float | None = None
    thread: str = "main"
    compiled: bool = False
    runtime: str = "torch"


@dataclass
class Samples:
    seconds: list[float]
    cores_used: float


@dataclass
class MatmulRate:
    dtype: str
    n: int
    tflops: float


@dataclass
class ServiceCell:
    image: str
    jpeg_kb: float
    concurrency: int
    requests: int
    errors: int
    images_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    peak_rss_mb: float | None
    max_batch: int = 1
    server_cpu_ms: float | None = None  # server process CPU time per answered request (all its threads)
    client_cpu_ms: float | None = None  # this process's CPU time per request: the load generator's share


@dataclass
class ServiceResult:
    startup_s: float
    rss_ready_mb: float | None
    peak_rss_mb: float | None
    runtime: str = "torch"  # what the service's PETSEG_RUNTIME=auto chose (its /model)
    precision: str = ""
    cells: list[ServiceCell] = field(default_factory=list)


@dataclass
class ModelReport:
    arch: str
    size: int
    gflop_per_image: float | None = None
    baseline: Timing | None = None
    engine: list[Timing] = field(default_factory=list)
    runtimes: list[Timing] = field(default_factory=list)  # the ONNX export on ONNX Runtime / OpenVINO
    service: ServiceResult | None = None
    train_plain: Timing | None = None
    train_project: Timing | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)


@dataclass
class BenchReport:
    started_at: str
    machine: Machine
    device: str
    settings: dict[str, Any]
    matmul: list[MatmulRate] = field(default_factory=list)
    models: list[ModelReport] = field(default_factory=list)
    seconds: float = 0.0
    load_average_end: list[float] = field(default_factory=list)


