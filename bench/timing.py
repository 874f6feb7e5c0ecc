"""Timing a call: warm-up, iterations, a time budget; each measurement on a fresh thread or process when asked."""
from __future__ import annotations

import concurrent.futures
import functools
import gc
import multiprocessing
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from bench.results import Samples, Timing

T = TypeVar("T")


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


def step(label: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement, saying on stderr what it is and how long it took; then free what it left."""
    print(f"  {label}...", end="", flush=True, file=sys.stderr)
    started = time.perf_counter()
    result = fn()
    print(f" {time.perf_counter() - started:.1f}s", file=sys.stderr)
    gc.collect()
    return result
