"""Model-only speed: the report's plain PyTorch baseline, petseg's inference engine, the matrix-product rate."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from app.cores import CoreShare, usable_cores
from app.service import model_lanes
from bench.results import DTYPES, Budget, MatmulRate, Timing
from bench.timing import in_fresh_process, in_fresh_process_thread, time_calls, to_timing
from models import build_model
from models.checkpoint import Checkpoint
from models.engine.segmenter import Segmenter, SegmenterBase


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
    results = [time_engine(segmenter, batch, budget) for batch in (1, budget.engine_batch)]
    del segmenter
    results.append(in_fresh_process_thread(_build_and_time_engine_b1, checkpoint, str(device), budget))
    lanes = model_lanes(0, device.type == "cpu")
    if lanes > 1:
        results.append(in_fresh_process(_time_engine_lanes, checkpoint, lanes, budget))
    return results


def time_engine(segmenter: SegmenterBase, batch: int, budget: Budget) -> Timing:
    """Time ``forward`` on one random normalised batch, on the calling thread."""
    images = torch.randn(batch, 3, segmenter.image_size, segmenter.image_size)
    samples = time_calls(lambda: segmenter.forward(images), segmenter.device, warmup=budget.warmup + 1,
                         iters=budget.iters, max_s=budget.max_s)
    thread = "main" if threading.current_thread() is threading.main_thread() else "worker"
    return to_timing(samples, batch, segmenter.precision, thread, segmenter.compiled, segmenter.runtime)


def _build_and_time_engine_b1(checkpoint: Checkpoint, device_name: str, budget: Budget) -> Timing:
    """Build, warm and time the engine at batch 1 on the calling thread (module level: it crosses processes)."""
    return time_engine(_engine(checkpoint, torch.device(device_name), (1,)), 1, budget)


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


