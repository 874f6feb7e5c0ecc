"""One thread owns the model; requests queue in front of it and are grouped into micro-batches.

Why: a GPU (and, less so, a CPU) computes a batch of 8 much faster than 8 batches of 1, and a single owner
thread means concurrent requests never race on the device. Loading and warm-up run on that thread too
(``call``): every thread that runs PyTorch CPU kernels gets its own OpenMP pool, and once the pools hold more
threads than there are cores, libgomp stops spinning between parallel regions; a forward pass then took 1.6x
longer (measured: 29 ms with all torch work on one thread, 50 ms when the model was loaded on another). The queue is bounded: when it is full the caller
gets a 503 with ``Retry-After`` instead of the server growing without limit.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from app.errors import ApiError

__all__ = ["BatchRunner"]

log = logging.getLogger(__name__)
_STOP = object()
T = TypeVar("T")


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: cf.Future[Any] = field(default_factory=cf.Future)


@dataclass
class _Job:
    tensor: torch.Tensor
    future: cf.Future[np.ndarray] = field(default_factory=cf.Future)


class BatchRunner:
    """Runs ``forward`` ((B,3,S,S) -> (B,S,S) probabilities) on one thread, in batches of up to ``max_batch``."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor] | None = None, *, max_batch: int = 1,
                 batch_wait_ms: float = 2.0, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self._forward = forward
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._queue: queue.Queue[_Job | object] = queue.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._thread = threading.Thread(target=self._run, name="petseg-model", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread and return its result (raising its exception): for load and warm-up."""
        job = _Call(fn)
        self._queue.put(job)
        return job.future.result()

    def configure(self, forward: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int, batch_wait_ms: float,
                  on_batch: Callable[[int, float], None] | None = None) -> None:
        """Attach the loaded model's forward (and the batching policy that depends on its device)."""
        self._forward = forward
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._on_batch = on_batch

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, tensor: torch.Tensor, timeout_s: float) -> np.ndarray:
        """Queue one (3,S,S) tensor and wait for its (S,S) probability map."""
        job = _Job(tensor)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ApiError(503, "the service is at capacity; retry shortly", {"Retry-After": "1"}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout_s)
        except asyncio.TimeoutError:
            job.future.cancel()
            raise ApiError(503, f"the model did not answer within {timeout_s:g}s; retry later",
                           {"Retry-After": "5"}) from None

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, stop = [first], False
        deadline = time.perf_counter() + self.batch_wait_s
        while len(jobs) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            if isinstance(item, _Call):
                self._run_call(item)
                continue
            jobs.append(item)  # type: ignore[arg-type]
        return [j for j in jobs if j.future.set_running_or_notify_cancel()], stop

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Call):
                self._run_call(item)
                continue
            jobs, stop = self._collect(item)  # type: ignore[arg-type]
            if jobs:
                self._run_batch(jobs)
            if stop:
                return

    @staticmethod
    def _run_call(call: _Call) -> None:
        try:
            call.future.set_result(call.fn())
        except BaseException as exc:  # handed to the caller of call(), which re-raises it
            call.future.set_exception(exc)

    def _run_batch(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            probs = self._forward(torch.stack([job.tensor for job in jobs])).numpy()
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of device memory on a batch of %d; answering 503", len(jobs))
            error = ApiError(503, "the model ran out of device memory; retry later or with fewer concurrent "
                                  "requests", {"Retry-After": "5"})
            for job in jobs:
                job.future.set_exception(error)
            return
        except Exception as exc:  # a bug, not bad input: surface it to each caller as a 500
            log.exception("model forward failed")
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, prob in zip(jobs, probs, strict=True):
            job.future.set_result(prob)
        if self._on_batch is not None:
            self._on_batch(len(jobs), time.perf_counter() - started)
