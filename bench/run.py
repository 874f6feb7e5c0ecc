"""Speed benchmark: the report's plain PyTorch baseline vs petseg's inference engine, service and training.

Run from the repository root (CUDA is used when present; ``--device cpu`` forces the CPU):

    python -m bench.run                       # both models at 256x256, ~10 minutes on a 2-core CPU
    python -m bench.run --quick               # resnet34_unet only, 128x128, few iterations, ~1-2 minutes
    python -m bench.run --models unet --size 256 --markdown --out bench/results/unet.json
    python -m bench.run --sections engine service    # a subset of: baseline engine runtimes service train

Per model, with random weights (speed does not depend on them):

1. baseline: fp32, eager, NCHW, batch 1, ``torch.no_grad()``, as the lab report runs it;
2. engine: ``models.engine.segmenter.Segmenter.forward`` (bf16 autocast where the hardware computes bf16,
   channels_last, ``inference_mode``) at batch 1 and a larger batch; FLOPs of one forward
   (``FlopCounterMode``) turn images/s into GFLOP/s, compared with the matrix-product rate measured in the
   same run;
3. service: ``python -m app`` on a loopback port, ``POST /segment`` (``Accept: image/png``) with synthetic
   500x375 and 4000x3000 JPEGs at several concurrencies: images/s, latency percentiles, errors, server peak
   RSS;
4. training: the report's plain loop (fp32, NCHW, sigmoid + ``nn.BCELoss`` + Dice) vs the project's
   ``training.loop.train_one_epoch`` (bf16 where native, channels_last, BCE-with-logits + Dice, clipping).
5. runtimes: the model exported to ONNX (``models.engine.exported``) on ONNX Runtime and OpenVINO, fp32 and int8 (static
   QDQ calibrated on synthetic photos: the weights are random, so only the speed means something here; accuracy
   is gated by tests/models/test_int8.py), batch 1 on all cores, each built and timed on a fresh thread of a
   fresh process; the service's runtime (``PETSEG_RUNTIME=auto``) is read from its ``/model``.

The client shares the machine with the server: on a small CPU it takes cycles from it, as a co-located proxy
would.
Results: a markdown table per section on stdout, everything in ``bench/results/run-<UTC time>.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import gc
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from app.cores import CoreShare, usable_cores
from app.service import model_lanes
from bench.common import (
    Machine,
    RequestSpec,
    Server,
    drive,
    drive_repeated,
    encode_image,
    fmt,
    machine_info,
    make_checkpoint,
    markdown_table,
    percentile_ms,
    running_server,
    synthetic_photo,
    utc_now,
    write_json,
)
from models import build_model
from models.checkpoint import Checkpoint, save_checkpoint
from models.engine.export_cache import CACHE_ENV
from models.engine.runtime import keep_freed_memory, resolve_device, resolve_precision
from models.engine.segmenter import Segmenter, SegmenterBase
from models.engine.selection import installed_runtimes
from models.nets.registry import canonical_arch_name
from training.loop import StepContext, train_one_epoch
from training.losses import BCEDiceLoss

T = TypeVar("T")
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


# ------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, iters: int, max_s: float,
               min_iters: int = 2) -> Samples:
    """Seconds per call after ``warmup`` untimed calls: at least ``min_iters``, then up to ``iters`` or
    ``max_s`` seconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    deadline = wall_start + max_s
    while len(times) < iters and (len(times) < min_iters or time.perf_counter() < deadline):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    cores = (time.process_time() - cpu_start) / max(time.perf_counter() - wall_start, 1e-9)
    return Samples(times, cores)


def to_timing(samples: Samples, batch: int, precision: str, thread: str = "main", compiled: bool = False,
              runtime: str = "torch") -> Timing:
    median = float(np.median(samples.seconds))
    return Timing(batch, precision, batch / median, median * 1000.0, len(samples.seconds),
                  round(samples.cores_used, 2), thread, compiled, runtime)


def in_new_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread, as the service's model thread (``app.batching.BatchRunner``) runs the
    model: intra-op threading can differ from the main thread's."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-model") as pool:
        return pool.submit(fn).result()


def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new process whose threads never ran a kernel: the service's situation."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def in_fresh_process_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a new thread of a new process whose main thread never ran a kernel: the service's
    situation. (Each thread that runs CPU kernels gets its own OpenMP pool; a pool left by this process's main
    thread would compete with the worker's and slow it, which the service never suffers.)"""
    return in_fresh_process(in_new_thread, functools.partial(fn, *args))


# --------------------------------------------------------------------------------------- model-only speed
def count_gflop(arch: str, size: int) -> float:
    """FLOPs of one fp32 forward of one image, counted on the meta device (no compute), else on the CPU."""
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build_model(arch).eval()
                image = torch.zeros(1, 3, size, size)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(image)
            return counter.get_total_flops() / 1e9
        except (NotImplementedError, RuntimeError):
            continue
    raise RuntimeError(f"cannot count the FLOPs of {arch}")


def matmul_rate(device: torch.device, dtype_name: str, budget: Budget) -> MatmulRate:
    """Dense n x n matrix-product rate in TFLOP/s, the best over a few sizes: the practical peak convolutions
    are measured against. (On the CPU no single size is best everywhere: here 2048 beats 4096 by 15%.)"""
    sizes = [8192] if device.type == "cuda" else ([2048, 4096] if dtype_name != "fp32" else [1024, 2048])
    best = MatmulRate(dtype_name, sizes[0], 0.0)
    for n in sizes:
        a = torch.randn(n, n, device=device).to(DTYPES[dtype_name])
        b = torch.randn(n, n, device=device).to(DTYPES[dtype_name])
        samples = time_calls(lambda: torch.matmul(a, b), device, warmup=1, iters=max(3, budget.iters // 2),
                             max_s=budget.max_s / 2)
        tflops = 2 * n**3 / float(np.median(samples.seconds)) / 1e12
        if tflops > best.tflops:
            best = MatmulRate(dtype_name, n, tflops)
    return best


def bench_baseline(checkpoint: Checkpoint, device: torch.device, budget: Budget) -> Timing:
    """The report's inference: fp32 eager NCHW model, batch 1, ``no_grad``, sigmoid, back to the CPU."""
    model = checkpoint.build_model().to(device).eval()
    image = torch.randn(1, 3, checkpoint.image_size, checkpoint.image_size)

    def step() -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(model(image.to(device))).cpu()

    samples = time_calls(step, device, warmup=budget.warmup, iters=budget.iters, max_s=budget.max_s)
    return to_timing(samples, 1, "fp32")


def _engine(checkpoint: Checkpoint, device: torch.device, batch_sizes: tuple[int, ...]) -> Segmenter:
    """The engine as the service configures it by default (precision and compile on ``auto``), warmed up."""
    segmenter = Segmenter(checkpoint, device=str(device), precision="auto", compile="auto")
    segmenter.warmup(batch_sizes)
    return segmenter


def bench_engine(checkpoint: Checkpoint, device: torch.device, budget: Budget) -> list[Timing]:
    """``Segmenter.forward`` on normalised batches already at the model size: the model path, no decoding.

    Batch 1 and ``engine_batch`` on the main thread; then batch 1 with the engine built, warmed and run on one
    fresh thread of a fresh process, as the service's model thread (``app.batching.BatchRunner``) does."""
    segmenter = _engine(checkpoint, device, (1, budget.engine_batch))
    results = [_time_engine(segmenter, batch, budget) for batch in (1, budget.engine_batch)]
    del segmenter
    results.append(in_fresh_process_thread(_build_and_time_engine_b1, checkpoint, str(device), budget))
    lanes = model_lanes(0, device.type == "cpu")
    if lanes > 1:
        results.append(in_fresh_process(_time_engine_lanes, checkpoint, lanes, budget))
    return results


def _time_engine(segmenter: SegmenterBase, batch: int, budget: Budget) -> Timing:
    """Time ``forward`` on one random normalised batch, on the calling thread."""
    images = torch.randn(batch, 3, segmenter.image_size, segmenter.image_size)
    samples = time_calls(lambda: segmenter.forward(images), segmenter.device, warmup=budget.warmup + 1,
                         iters=budget.iters, max_s=budget.max_s)
    thread = "main" if threading.current_thread() is threading.main_thread() else "worker"
    return to_timing(samples, batch, segmenter.precision, thread, segmenter.compiled, segmenter.runtime)


def _build_and_time_engine_b1(checkpoint: Checkpoint, device_name: str, budget: Budget) -> Timing:
    """Build, warm and time the engine at batch 1 on the calling thread (module level: it crosses processes)."""
    return _time_engine(_engine(checkpoint, torch.device(device_name), (1,)), 1, budget)


def _time_engine_lanes(checkpoint: Checkpoint, lanes: int, budget: Budget) -> Timing:
    """The CPU engine as the service runs it under load: one compiled model, built and warmed on lane 0 with every
    core, then warmed and run on ``lanes`` threads at once, each on its share of the cores (``app.cores``).
    Images/s counts every lane's passes; ms/batch is the median single pass."""
    share = CoreShare(usable_cores(), lanes).share  # the service's own rule, not a copy of it
    built = threading.Event()
    start = threading.Barrier(lanes)
    holder: list[Segmenter] = []
    times: list[list[float]] = [[] for _ in range(lanes)]
    window: list[float] = []

    def lane(index: int) -> None:
        if index == 0:
            holder.append(_engine(checkpoint, torch.device("cpu"), (1,)))
            built.set()
        built.wait()
        torch.set_num_threads(share)
        segmenter = holder[0]
        segmenter.warmup((1,))
        images = torch.randn(1, 3, segmenter.image_size, segmenter.image_size)
        start.wait()
        if index == 0:
            window.extend([time.perf_counter(), time.process_time()])
        deadline = time.perf_counter() + budget.max_s
        while len(times[index]) < budget.iters * 2 and time.perf_counter() < deadline:
            started = time.perf_counter()
            segmenter.forward(images)
            times[index].append(time.perf_counter() - started)

    with concurrent.futures.ThreadPoolExecutor(lanes, thread_name_prefix="bench-lane") as pool:
        for future in [pool.submit(lane, index) for index in range(lanes)]:
            future.result()
    wall, cpu = time.perf_counter() - window[0], time.process_time() - window[1]
    passes = [t for lane_times in times for t in lane_times]
    return Timing(1, holder[0].precision, len(passes) / wall, float(np.median(passes)) * 1000.0, len(passes),
                  round(cpu / wall, 2), f"{lanes} lanes", holder[0].compiled)


# ---------------------------------------------------------------------------------------------- runtimes
def bench_runtimes(checkpoint: Checkpoint, device: torch.device, budget: Budget) -> list[Timing]:
    """The checkpoint exported to ONNX, on each installed runtime in fp32 and int8: batch 1 on all the cores, built
    and timed on a fresh thread of a fresh process (the first exports into a cache folder of this run's, the others
    read it). CPU only: these runtimes run on the CPU in this version."""
    if device.type != "cpu":
        return []
    installed = installed_runtimes()
    paths = [(runtime, precision) for runtime, precision in EXPORTED_PATHS if runtime in installed]
    if not paths:
        print("  runtimes: neither onnxruntime nor openvino is installed (pip install 'petseg[onnx]')",
              file=sys.stderr)
        return []
    with tempfile.TemporaryDirectory(prefix="petseg-bench-onnx-") as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for seed in range(CALIBRATION_PHOTOS):
            (photos / f"photo_{seed}.jpg").write_bytes(encode_image(synthetic_photo(500, 375, seed=seed)))
        previous = os.environ.get(CACHE_ENV)
        os.environ[CACHE_ENV] = str(Path(tmp) / "cache")  # inherited by the spawned processes
        try:
            return [_step(f"{runtime} {precision}", functools.partial(
                in_fresh_process_thread, _build_and_time_exported, checkpoint, runtime, precision, str(photos),
                budget)) for runtime, precision in paths]
        finally:
            if previous is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = previous


def _build_and_time_exported(checkpoint: Checkpoint, runtime: str, precision: str, photos: str,
                             budget: Budget) -> Timing:
    """Build (export, quantise or read from the cache), warm and time one exported engine at batch 1."""
    from models.engine.exported import ExportedSegmenter

    engine = ExportedSegmenter(checkpoint, runtime=runtime, precision=precision, calibration=photos)
    engine.warmup((1,))
    return _time_engine(engine, 1, budget)


# ---------------------------------------------------------------------------------------------- training
def _random_batch(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = (torch.rand(batch, 1, size, size, generator=generator) > 0.6).float()
    return images, masks


def _report_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    inter = (probs * target).sum()
    return 1 - (2 * inter + eps) / (probs.sum() + target.sum() + eps)


def bench_train_plain(arch: str, size: int, device: torch.device, budget: Budget) -> Timing:
    """The report's step: fp32 NCHW, sigmoid then ``nn.BCELoss`` + Dice, Adam (clip order is not speed)."""
    torch.manual_seed(0)
    model = build_model(arch).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    bce = nn.BCELoss()
    images, masks = (t.to(device) for t in _random_batch(budget.train_batch, size))

    def step() -> float:
        optimizer.zero_grad()
        probs = torch.sigmoid(model(images))
        loss = bce(probs, masks) + _report_dice_loss(probs, masks)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    samples = time_calls(step, device, warmup=1, iters=budget.train_iters, max_s=budget.train_max_s)
    return to_timing(samples, budget.train_batch, "fp32")


class TimedLoader:
    """An in-memory loader repeating one batch that stamps the time each step asks for the next batch, so
    ``train_one_epoch``'s own per-step work (loss, clipping, metrics) is inside the measurement."""

    warmup = 1

    def __init__(self, batch: dict[str, Any], budget: Budget) -> None:
        self.batch, self.budget = batch, budget
        self.stamps: list[tuple[float, float]] = []  # (wall, process CPU) when each step asked for a batch

    def _stamp(self) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._stamp()
        deadline = float("inf")
        for index in range(self.warmup + self.budget.train_iters):
            if index == self.warmup:
                deadline = time.perf_counter() + self.budget.train_max_s
            yield self.batch
            self._stamp()
            if index + 1 - self.warmup >= 2 and time.perf_counter() > deadline:
                return

    def samples(self) -> Samples:
        wall, cpu = (np.array(column) for column in zip(*self.stamps, strict=True))
        timed_wall = max(wall[-1] - wall[self.warmup], 1e-9)
        return Samples(list(np.diff(wall)[self.warmup:]), (cpu[-1] - cpu[self.warmup]) / timed_wall)


def bench_train_project(arch: str, size: int, device: torch.device, budget: Budget) -> Timing:
    """``train_one_epoch`` with the project's choices: bf16 where native, channels_last, BCE+Dice, clip."""
    torch.manual_seed(0)
    precision = resolve_precision("auto", device)  # the inference rule: bf16 only where the hardware has it
    model = build_model(arch).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    ctx = StepContext(device, precision, True, BCEDiceLoss(), optimizer, scaler, clip_grad_norm=1.0,
                      progress=False)
    images, masks = _random_batch(budget.train_batch, size)
    names = [str(i) for i in range(len(images))]
    loader = TimedLoader({"image": images, "mask": masks, "name": names}, budget)
    train_one_epoch(model, loader, ctx)
    return to_timing(loader.samples(), budget.train_batch, precision)


# ----------------------------------------------------------------------------------------------- service
def make_photos() -> dict[str, bytes]:
    return {label: encode_image(synthetic_photo(w, h, seed=i), "JPEG", 90)
            for i, (label, (w, h)) in enumerate(PHOTO_SIZES.items())}


def _photo_request(label: str, jpeg: bytes) -> RequestSpec:
    return RequestSpec(f"photo {label}", files={"image": (f"{label}.jpg", jpeg, "image/jpeg")},
                       headers={"Accept": "image/png"})


def _service_cell(server: Server, label: str, jpeg: bytes, concurrency: int, budget: Budget, max_batch: int
                  ) -> ServiceCell:
    spec = _photo_request(label, jpeg)
    server_cpu, client_cpu = server.cpu_s(), time.process_time()
    outcomes, wall = asyncio.run(drive_repeated(server.url, spec, concurrency=concurrency,
                                                max_requests=budget.service_requests,
                                                max_seconds=budget.service_max_s))
    client_cpu = time.process_time() - client_cpu
    server_end = server.cpu_s()
    good = [o.latency_s for o in outcomes if o.correct]
    per_request = 1000.0 / max(len(outcomes), 1)
    return ServiceCell(label, round(len(jpeg) / 1024, 1), concurrency, len(outcomes),
                       sum(not o.correct for o in outcomes), len(good) / wall if wall else 0.0,
                       percentile_ms(good, 50), percentile_ms(good, 95), percentile_ms(good, 99),
                       server.peak_rss_mb(), max_batch,
                       (server_end - server_cpu) * per_request if server_cpu is not None and server_end else None,
                       client_cpu * per_request)


def _warm_service(server: Server, photos: dict[str, bytes]) -> None:
    """Two sequential requests per photo size, so first-call costs (allocations, lazy imports) are not
    measured."""
    for label, jpeg in photos.items():
        spec = _photo_request(label, jpeg)
        outcomes, _ = asyncio.run(drive(server.url, lambda _, s=spec: s, concurrency=1, max_requests=2,
                                        max_seconds=60))
        failed = [o for o in outcomes if not o.correct]
        if failed:
            raise RuntimeError(f"warm-up request failed: {failed[0]} (server log: {server.log_path})")


def _served_model(server: Server) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/model", timeout=10).json())


def bench_service(arch: str, size: int, device: torch.device, photos: dict[str, bytes],
                  budget: Budget) -> ServiceResult:
    """Every photo at every concurrency with the service's defaults; then the small photo at concurrency >= 4
    with micro-batching switched the other way (on where the default is off, off where it is on), so the run
    shows whether the default is the right one on this machine."""
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        path, checkpoint = make_checkpoint(Path(tmp), arch, size)
        path = _with_int8_ranges(path, checkpoint)
        with running_server(path, Path(tmp), device=str(device), env=dict(budget.service_env)) as server:
            served = _served_model(server)
            result = ServiceResult(server.startup_s, server.rss_mb(), None, served.get("runtime", "torch"),
                                   served.get("precision") or served.get("dtype", ""))
            default_batch = int(served["max_batch"])
            _warm_service(server, photos)
            for label, jpeg in photos.items():
                for concurrency in budget.concurrency:
                    result.cells.append(_service_cell(server, label, jpeg, concurrency, budget, default_batch))
            result.peak_rss_mb = server.peak_rss_mb()
        other_batch = budget.engine_batch if default_batch == 1 else 1
        env = {**dict(budget.service_env), "PETSEG_MAX_BATCH": str(other_batch),
               "PETSEG_BATCH_WAIT_MS": str(budget.batch_wait_ms)}
        small = {SMALL_PHOTO: photos[SMALL_PHOTO]}
        with running_server(path, Path(tmp), device=str(device), env=env) as server:
            _warm_service(server, small)
            for concurrency in (c for c in budget.concurrency if c >= 4):
                result.cells.append(_service_cell(server, SMALL_PHOTO, photos[SMALL_PHOTO], concurrency, budget,
                                                  other_batch))
    return result


def _with_int8_ranges(path: Path, checkpoint: Checkpoint) -> Path:
    """The checkpoint with int8 activation ranges stored in it, as the embedded model has them, so the service
    picks the engine it picks for the embedded model (int8 where ``auto`` says so). Measured on synthetic photos:
    the speed does not depend on them. Unchanged where ONNX Runtime is not installed."""
    if not {"onnxruntime", "openvino"} & installed_runtimes():
        return path
    from models.engine.quantize import measure_ranges

    with tempfile.TemporaryDirectory(prefix="petseg-bench-photos-") as tmp:
        photos = []
        for seed in range(CALIBRATION_PHOTOS):
            photos.append(Path(tmp) / f"photo_{seed}.jpg")
            photos[-1].write_bytes(encode_image(synthetic_photo(500, 375, seed=seed)))
        checkpoint.int8_calibration = measure_ranges(checkpoint, photos).to_dict()
    return save_checkpoint(checkpoint, path)


# ------------------------------------------------------------------------------------------------ ratios
def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cell(report: ModelReport, image: str, concurrency: int, *, default_batch: bool = True) -> ServiceCell | None:
    """The service cell for a photo and concurrency, with the default micro-batching or the other setting."""
    cells = report.service.cells if report.service else []
    matching = [c for c in cells if c.image == image and c.concurrency == concurrency]
    if not matching:
        return None
    default = matching[0].max_batch  # the default-settings cells come first
    return next((c for c in matching if (c.max_batch == default) == default_batch), None)


def compute_ratios(report: ModelReport, matmul: list[MatmulRate]) -> dict[str, float | None]:
    rates = {m.dtype: m.tflops * 1000.0 for m in matmul}  # GFLOP/s
    main = [t for t in report.engine if t.thread == "main"]
    engine1 = next((t for t in main if t.batch == 1), None)
    worker1 = next((t for t in report.engine if t.thread == "worker"), None)
    lanes1 = next((t for t in report.engine if t.thread.endswith("lanes")), None)
    # What the service is held to: the engine's fastest way to run single images, lanes included.
    serving = max((t for t in report.engine if t.batch == 1), key=lambda t: t.images_per_s, default=None)
    best = max(report.engine, key=lambda t: t.images_per_s) if report.engine else None
    gflop = report.gflop_per_image
    small4, small1 = _cell(report, "500x375", 4), _cell(report, "500x375", 1)
    large1 = _cell(report, "4000x3000", 1)
    other4 = _cell(report, "500x375", 4, default_batch=False)
    base = report.baseline
    return {
        "engine_b1_vs_baseline": _ratio(engine1 and engine1.images_per_s, base and base.images_per_s),
        "engine_best_vs_baseline": _ratio(best and best.images_per_s, base and base.images_per_s),
        "engine_worker_thread_vs_main_b1": _ratio(worker1 and worker1.images_per_s,
                                                  engine1 and engine1.images_per_s),
        "engine_gflops": best.images_per_s * gflop if best and gflop else None,
        "engine_fraction_of_matmul": _ratio(best.images_per_s * gflop if best and gflop else None,
                                            rates.get(best.precision) if best else None),
        "baseline_fraction_of_fp32_matmul": _ratio(base.images_per_s * gflop if base and gflop else None,
                                                   rates.get("fp32")),
        "engine_lanes_vs_b1": _ratio(lanes1 and lanes1.images_per_s, worker1 and worker1.images_per_s),
        "service_c4_500x375_vs_engine_b1": _ratio(small4 and small4.images_per_s,
                                                  serving and serving.images_per_s),
        "p50_4000x3000_vs_500x375_c1": _ratio(large1 and large1.p50_ms, small1 and small1.p50_ms),
        "service_c4_other_batching_vs_default": _ratio(other4 and other4.images_per_s,
                                                       small4 and small4.images_per_s),
        "train_project_vs_plain": _ratio(report.train_project and report.train_project.images_per_s,
                                         report.train_plain and report.train_plain.images_per_s),
        **_runtime_ratios(report, worker1, small4),
    }


def _exported(report: ModelReport, runtime: str, precision: str) -> Timing | None:
    return next((t for t in report.runtimes if (t.runtime, t.precision) == (runtime, precision)), None)


def _runtime_ratios(report: ModelReport, engine_worker: Timing | None, small4: ServiceCell | None
                    ) -> dict[str, float | None]:
    """The exported runtimes against ONNX Runtime fp32 at batch 1, the reference a user would pick instead."""
    ort32 = _exported(report, "onnxruntime", "fp32")
    reference = ort32 and ort32.images_per_s
    int8 = [t for t in report.runtimes if t.precision == "int8"]
    best_int8 = max(int8, key=lambda t: t.images_per_s) if int8 else None
    return {
        "onnxruntime_fp32_vs_baseline": _ratio(reference, report.baseline and report.baseline.images_per_s),
        # Both built and run on a fresh thread of a fresh process, batch 1, all cores.
        "engine_b1_worker_vs_onnxruntime_fp32": _ratio(engine_worker and engine_worker.images_per_s, reference),
        "openvino_fp32_vs_onnxruntime_fp32": _ratio(
            (t := _exported(report, "openvino", "fp32")) and t.images_per_s, reference),
        "best_int8_vs_onnxruntime_fp32": _ratio(best_int8 and best_int8.images_per_s, reference),
        "service_c4_500x375_vs_onnxruntime_fp32_b1": _ratio(small4 and small4.images_per_s, reference),
    }


# ------------------------------------------------------------------------------------------------ tables
def _pct(value: float | None) -> str:
    return fmt(value * 100 if value is not None else None, 1, "%")


def _x(value: float | None) -> str:
    return fmt(value, 2, "x")


def machine_table(report: BenchReport) -> str:
    m = report.machine
    rows = [["CPU", m.cpu], ["CPU flags", ", ".join(m.cpu_flags) or "–"],
            ["cores (usable / logical)", f"{m.usable_cores} / {m.logical_cores}"],
            ["memory", f"{m.memory_gb} GB"],
            ["GPU", m.gpu or "none"], ["torch (threads)", f"{m.torch} ({m.torch_threads})"],
            ["device used", report.device],
            ["load average (1/5/15 min) at start", " ".join(map(str, m.load_average))],
            ["load average at end", " ".join(map(str, report.load_average_end)) or "–"]]
    return markdown_table(["machine", ""], rows)


def matmul_table(report: BenchReport) -> str:
    rows = [[m.dtype, f"{m.n}x{m.n}", fmt(m.tflops, 2)] for m in report.matmul]
    return markdown_table(["matmul dtype", "size", "TFLOP/s"], rows)


def model_table(report: BenchReport) -> str:
    rates = {m.dtype: m.tflops * 1000.0 for m in report.matmul}
    rows = []
    for r in report.models:
        for name, t in [("baseline", r.baseline)] + [("engine", t) for t in r.engine] + \
                [(t.runtime, t) for t in r.runtimes]:
            if t is None:
                continue
            gflops = t.images_per_s * r.gflop_per_image if r.gflop_per_image else None
            where = {"main": "", "worker": " (worker thread)"}.get(t.thread, f" ({t.thread})")
            where += ", compiled" if t.compiled else ""
            rows.append([r.arch, name + where, str(t.batch), t.precision, fmt(t.images_per_s, 2),
                         fmt(t.median_ms, 1), fmt(gflops, 1), _pct(_ratio(gflops, rates.get(t.precision))),
                         fmt(t.cores_used, 2)])
    headers = ["model", "path", "batch", "precision", "img/s", "ms/batch", "GFLOP/s", "of matmul peak",
               "cores used"]
    return markdown_table(headers, rows)


def service_table(report: BenchReport) -> str:
    rows = []
    for r in report.models:
        for c in r.service.cells if r.service else []:
            rows.append([r.arch, f"{c.image} ({c.jpeg_kb:.0f} KB)", str(c.max_batch), str(c.concurrency),
                         str(c.requests), fmt(c.server_cpu_ms, 1), fmt(c.client_cpu_ms, 1),
                         str(c.errors), fmt(c.images_per_s, 2), fmt(c.p50_ms), fmt(c.p95_ms), fmt(c.p99_ms),
                         fmt(c.peak_rss_mb, 0)])
    headers = ["model", "JPEG", "max batch", "concurrency", "requests", "server CPU ms/req", "client CPU ms/req",
               "errors", "img/s", "p50 ms", "p95 ms", "p99 ms", "server peak RSS MB"]
    return markdown_table(headers, rows)


def train_table(report: BenchReport) -> str:
    rows = []
    for r in report.models:
        for name, t in (("report's plain loop", r.train_plain), ("train_one_epoch", r.train_project)):
            if t is not None:
                rows.append([r.arch, name, t.precision, str(t.batch), fmt(t.images_per_s, 2),
                             fmt(t.median_ms, 0), fmt(t.cores_used, 2)])
    return markdown_table(["model", "loop", "precision", "batch", "img/s", "ms/step", "cores used"], rows)


def ratio_table(report: BenchReport) -> str:
    rows = [[r.arch, fmt(r.gflop_per_image, 1), _x(r.ratios.get("engine_b1_vs_baseline")),
             _x(r.ratios.get("engine_best_vs_baseline")), _pct(r.ratios.get("engine_fraction_of_matmul")),
             _pct(r.ratios.get("service_c4_500x375_vs_engine_b1")),
             _x(r.ratios.get("p50_4000x3000_vs_500x375_c1")), _x(r.ratios.get("train_project_vs_plain")),
             _x(r.ratios.get("engine_worker_thread_vs_main_b1")), _x(r.ratios.get("engine_lanes_vs_b1")),
             _x(r.ratios.get("service_c4_other_batching_vs_default"))]
            for r in report.models]
    headers = ["model", "GFLOP/img", "engine b1 / baseline", "engine best / baseline",
               "engine of matmul peak", "service c4 500x375 / fastest engine b1", "p50 4000x3000 / 500x375 (c1)",
               "train project / plain", "engine b1 worker / main thread", "engine b1 lanes / worker thread",
               "service c4: other micro-batching / default"]
    return markdown_table(headers, rows)


def runtime_table(report: BenchReport) -> str:
    """The exported runtimes beside the PyTorch engine and the service, per model: images/s at batch 1 on all
    cores, and the ratios against ONNX Runtime fp32 (the issue's reference)."""
    rows = []
    for r in report.models:
        worker = next((t for t in r.engine if t.thread == "worker"), None)
        cells = [fmt((t := _exported(r, runtime, precision)) and t.images_per_s, 2)
                 for runtime, precision in EXPORTED_PATHS]
        small4 = _cell(r, SMALL_PHOTO, 4)
        served = f"{r.service.runtime} {r.service.precision}" if r.service else "–"
        rows.append([r.arch, fmt(worker and worker.images_per_s, 2), *cells,
                     _x(r.ratios.get("best_int8_vs_onnxruntime_fp32")),
                     f"{fmt(small4 and small4.images_per_s, 2)} ({served})",
                     _x(r.ratios.get("service_c4_500x375_vs_onnxruntime_fp32_b1"))])
    headers = ["model", "torch engine b1 (fresh process)",
               *[f"{runtime} {precision}" for runtime, precision in EXPORTED_PATHS],
               "best int8 / onnxruntime fp32", "service img/s c4 500x375 (runtime)", "service c4 / onnxruntime fp32 b1"]
    return markdown_table(headers, rows) + "\n\n" + _machine_line(report)


def readme_table(report: BenchReport) -> str:
    """One row per model for the README, ratios included, with the machine underneath."""
    rows = []
    for r in report.models:
        base, main = r.baseline, [t for t in r.engine if t.thread == "main"]
        lanes = next((t for t in r.engine if t.thread.endswith("lanes")), None)
        small1, large1, small4 = _cell(r, "500x375", 1), _cell(r, "4000x3000", 1), _cell(r, "500x375", 4)
        other4 = _cell(r, "500x375", 4, default_batch=False)
        rows.append([
            r.arch, fmt(r.gflop_per_image, 1), fmt(base and base.images_per_s, 2),
            " / ".join(fmt(t.images_per_s, 2) for t in main) or "–", fmt(lanes and lanes.images_per_s, 2),
            _x(r.ratios.get("engine_best_vs_baseline")), _pct(r.ratios.get("engine_fraction_of_matmul")),
            fmt(small4 and small4.images_per_s, 2), _pct(r.ratios.get("service_c4_500x375_vs_engine_b1")),
            f"{fmt(small1 and small1.p50_ms, 0)} / {fmt(large1 and large1.p50_ms, 0)} "
            f"({_x(r.ratios.get('p50_4000x3000_vs_500x375_c1'))})",
            f"{fmt(other4 and other4.images_per_s, 2)} ({_x(r.ratios.get('service_c4_other_batching_vs_default'))})",
            f"{fmt(r.train_plain and r.train_plain.images_per_s, 2)} → "
            f"{fmt(r.train_project and r.train_project.images_per_s, 2)} ({_x(r.ratios.get('train_project_vs_plain'))})",
        ])
    batches = "/".join(f"b{t.batch}" for t in (report.models[0].engine if report.models else []) if t.thread == "main")
    peak = next((f"{m.tflops:.2f} TFLOP/s" for m in report.matmul if m.dtype != "fp32"), "–")
    headers = ["model", "GFLOP/img", "baseline img/s (fp32, eager, NCHW, b1)", f"engine img/s {batches}",
               "engine img/s b1 on lanes",
               "engine best / baseline", f"engine GFLOP/s of bf16 matmul ({peak})", "service img/s, c4, 500x375",
               "service / fastest engine b1", "p50 ms 500x375 / 4000x3000 (c1)",
               "service img/s c4, micro-batching switched (vs default)", "train img/s plain → project"]
    return markdown_table(headers, rows) + "\n\n" + _machine_line(report)


def _machine_line(report: BenchReport) -> str:
    m = report.machine
    size = report.models[0].size if report.models else 0
    gpu = f" · {m.gpu}" if m.gpu else ""
    return (f"{report.device} · {m.cpu} ({', '.join(m.cpu_flags) or 'no AVX-512'}) · {m.usable_cores} cores"
            f"{gpu} · torch {m.torch} · {size}x{size} input")


def render(report: BenchReport) -> str:
    parts = [("Machine", machine_table(report)), ("Matrix-product rate (same run)", matmul_table(report)),
             ("Model only (random weights)", model_table(report)),
             ("Exported runtimes (ONNX; img/s, batch 1, all cores)", runtime_table(report)),
             ("Service end to end (HTTP, loopback, Accept: image/png)", service_table(report)),
             ("Training step", train_table(report)), ("Ratios", ratio_table(report))]
    return "\n\n".join(f"### {title}\n\n{table}" for title, table in parts)


# -------------------------------------------------------------------------------------------------- main
def _step(label: str, fn: Callable[[], Any]) -> Any:
    print(f"  {label}...", end="", flush=True, file=sys.stderr)
    started = time.perf_counter()
    result = fn()
    print(f" {time.perf_counter() - started:.1f}s", file=sys.stderr)
    gc.collect()
    return result


def bench_model(arch: str, size: int, device: torch.device, sections: set[str], budget: Budget,
                photos: dict[str, bytes] | None) -> ModelReport:
    print(f"{arch} at {size}x{size} on {device}", file=sys.stderr)
    report = ModelReport(arch, size, gflop_per_image=_step("FLOPs", lambda: count_gflop(arch, size)))
    if sections & {"baseline", "engine", "runtimes"}:
        _bench_model_only(report, device, sections, budget)
    if "train" in sections:
        report.train_plain = _step("train, plain", lambda: bench_train_plain(arch, size, device, budget))
        report.train_project = _step("train, project",
                                     lambda: bench_train_project(arch, size, device, budget))
    if "service" in sections and photos:
        report.service = _step("service", lambda: bench_service(arch, size, device, photos, budget))
    return report


def _bench_model_only(report: ModelReport, device: torch.device, sections: set[str], budget: Budget) -> None:
    """Baseline, engine and the exported runtimes share one set of random weights, as a checkpoint would deliver
    them."""
    torch.manual_seed(0)
    weights = build_model(report.arch).state_dict()
    checkpoint = Checkpoint(report.arch, weights, image_size=report.size, epoch=1)
    if "baseline" in sections:
        report.baseline = _step("baseline", lambda: bench_baseline(checkpoint, device, budget))
    if "engine" in sections:
        report.engine = _step("engine", lambda: bench_engine(checkpoint, device, budget))
    if "runtimes" in sections:
        report.runtimes = bench_runtimes(checkpoint, device, budget)


def measure_matmul(device: torch.device, budget: Budget) -> list[MatmulRate]:
    engine_dtype = resolve_precision("auto", device)
    wanted = ["fp32", engine_dtype] + (["bf16"] if device.type == "cuda" else [])
    return [_step(f"matmul {d}", lambda d=d: matmul_rate(device, d, budget)) for d in dict.fromkeys(wanted)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"resnet34_unet only, {QUICK_SIZE}x{QUICK_SIZE}, few iterations: checks it all works")
    p.add_argument("--models", nargs="+", default=None, help="architectures (default: unet resnet34_unet)")
    p.add_argument("--size", type=int, default=None,
                   help=f"input size (default 256; {QUICK_SIZE} with --quick)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--engine-batch", type=int, default=None,
                   help="second engine batch size (default 8 on a GPU, 4 on a CPU, 2 with --quick)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default bench/results/run-<time>.json)")
    p.add_argument("--markdown", action="store_true", help="also print a README-ready summary table")
    p.add_argument("--service-env", nargs="+", default=[], metavar="PETSEG_KEY=VALUE", type=_service_setting,
                   help="service settings (e.g. PETSEG_RUNTIME=openvino PETSEG_PRECISION=int8); default: none, the "
                        "service as shipped")
    return p


def _budget(args: argparse.Namespace, device: torch.device) -> Budget:
    budget = QUICK if args.quick else DEFAULT
    budget = replace(budget, service_env=tuple(args.service_env))
    if args.engine_batch:
        return replace(budget, engine_batch=args.engine_batch)
    if device.type == "cuda" and not args.quick:
        return replace(budget, engine_batch=8)
    return budget


def _service_setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("PETSEG_"):
        raise argparse.ArgumentTypeError(f"expected PETSEG_KEY=VALUE, not {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        device = resolve_device(args.device)
        models = [canonical_arch_name(m) for m in args.models or
                  (["resnet34_unet"] if args.quick else ["unet", "resnet34_unet"])]
    except ValueError as exc:  # UnknownArchitectureError is a ValueError
        parser.error(str(exc))
    budget = _budget(args, device)
    keep_freed_memory()  # as the engine sets it, before the baseline too: every path runs under the same malloc
    size = args.size or (QUICK_SIZE if args.quick else 256)
    report = BenchReport(utc_now(), machine_info(), str(device),
                         {"quick": args.quick, "size": size, "sections": args.sections, "budget": budget})
    print(f"benchmark on {device}: {', '.join(models)} at {size}x{size}", file=sys.stderr)
    if {"baseline", "engine", "runtimes"} & set(args.sections):
        report.matmul = measure_matmul(device, budget)
    photos = _step("synthetic JPEGs", make_photos) if "service" in args.sections else None
    for arch in models:
        model_report = bench_model(arch, size, device, set(args.sections), budget, photos)
        model_report.ratios = compute_ratios(model_report, report.matmul)
        report.models.append(model_report)
    report.seconds = round(time.perf_counter() - started, 1)
    report.load_average_end = [round(x, 2) for x in os.getloadavg()]
    print(render(report))
    if report.machine.load_average[0] > 0.5 * report.machine.usable_cores:
        print(f"\nnote: the machine was busy (load average {report.machine.load_average[0]} on "
              f"{report.machine.usable_cores} cores): these numbers are contended.")
    if args.markdown:
        print(f"\n### README summary\n\n{readme_table(report)}")
        print(f"\n### README runtimes\n\n{runtime_table(report)}")
    path = write_json(report, args.out, "run")
    print(f"\n{report.seconds:.0f}s; results written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
