"""Model lanes: threads that own the model's forward pass, fed from one bounded queue of requests.

Why threads that own the model: a single owner per pass means concurrent requests never race on the device, and
on a GPU a batch of 8 is much faster than 8 batches of 1, so queued requests are grouped into micro-batches.
Loading and warm-up run on lane 0 (``call``): every thread that runs PyTorch CPU kernels gets its own OpenMP
pool, and once the pools hold more threads than there are cores libgomp stops spinning between parallel regions
(measured: a forward pass took 50 ms instead of 29 ms when the model was loaded on another thread).

On the CPU there are two lanes by default and each pass is told how many cores it may use (``app.cores``): all
of them when it runs alone (lowest latency), a share when passes overlap (highest throughput). The queue is
bounded: when it is full the caller gets a 503 with ``Retry-After`` instead of the server growing without limit.

Several models share the lanes (``add_model``): a job names its model, a batch holds one model's jobs only, and
no more passes run at once than there are lanes, whichever models they are for. Jobs without a name run the
model given to ``configure`` (the default one), so a single-model service runs exactly as before.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from app.cores import CoreShare, usable_cores
from app.errors import ApiError
from models.engine.runtime import use_intra_op_threads

__all__ = ["BatchRunner"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Call:
    fn: Callable[[], Any]
    threads: int | None = None
    future: cf.Future[Any] = field(default_factory=cf.Future)


@dataclass
class _Job:
    tensor: torch.Tensor
    model: str | None = None  # None: the default model (``configure``)
    future: cf.Future[np.ndarray] = field(default_factory=cf.Future)


@dataclass
class _Model:
    forward: Callable[[torch.Tensor], torch.Tensor]
    on_batch: Callable[[int, float], None] | None


_ANY_MODEL = object()  # ``take`` without a model filter


class _Stop:
    """Returned by :meth:`_WorkQueue.take` once the queue is closed and drained."""


class _WorkQueue:
    """Requests for any lane (bounded), calls for one lane (unbounded: start-up only), and a close flag.

    Lane 0 takes requests first: the other lanes take one only while lane 0 is busy, so a request that arrives
    alone runs on lane 0, the one lane whose OpenMP pool spans all the cores."""

    def __init__(self, lanes: int, max_jobs: int) -> None:
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._calls: list[deque[_Call]] = [deque() for _ in range(lanes)]
        self._max_jobs = max_jobs
        self._closed = False
        self._lane0_busy = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put_job(self, job: _Job) -> bool:
        """False when the queue is full."""
        with self._cond:
            if len(self._jobs) >= self._max_jobs:
                return False
            self._jobs.append(job)
            self._cond.notify_all()  # not notify(): the one woken might be a lane that must leave it to lane 0
            return True

    def put_call(self, lane: int, call: _Call) -> None:
        with self._cond:
            self._calls[lane].append(call)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def lane0_idle(self) -> None:
        """Lane 0 finished its pass: until it takes another request, the other lanes leave them to it."""
        with self._cond:
            self._lane0_busy = False

    def _pop_job(self, model: object) -> _Job | None:
        """The oldest job, or with a model filter the oldest job for that model (None when there is none)."""
        if model is _ANY_MODEL:
            return self._jobs.popleft()
        for index, job in enumerate(self._jobs):
            if job.model == model:
                del self._jobs[index]
                return job
        return None

    def take(self, lane: int, timeout_s: float | None = None, model: object = _ANY_MODEL
             ) -> _Job | _Call | _Stop | None:
        """The lane's next call, else the next job (for ``model`` only, when given: filling a batch); ``_Stop``
        once closed and empty; None on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._calls[lane]:
                    return self._calls[lane].popleft()
                job = self._pop_job(model) if self._jobs and (lane == 0 or self._lane0_busy) else None
                if job is not None:
                    if lane == 0:
                        self._lane0_busy = True
                        self._cond.notify_all()  # other lanes may now take what is queued behind this one
                    return job
                if self._closed and not self._jobs:
                    return _Stop()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)


class BatchRunner:
    """Runs ``forward`` ((B,3,S,S) -> (B,S,S) probabilities) on ``lanes`` threads, in batches of up to
    ``max_batch``. With more than one lane, each pass runs with the thread count :class:`CoreShare` gives it."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor] | None = None, *, max_batch: int = 1,
                 batch_wait_ms: float = 2.0, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None, lanes: int = 1,
                 cores: int | None = None) -> None:
        self._forward = forward
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._on_batch = on_batch
        self._models: dict[str, _Model] = {}
        self.lanes = max(1, lanes)
        self.cores = CoreShare(cores or usable_cores(), self.lanes)
        self._work = _WorkQueue(self.lanes, max_queue)
        self._threads = [threading.Thread(target=self._run, args=(lane,), name=f"petseg-model-{lane}", daemon=True)
                         for lane in range(self.lanes)]
        for thread in self._threads:
            thread.start()

    def call(self, fn: Callable[[], T], *, lane: int = 0, threads: int | None = None) -> T:
        """Run ``fn`` on one lane's thread (with ``threads`` intra-op threads when given) and return its result,
        raising its exception: for loading and warm-up."""
        call = _Call(fn, threads)
        self._work.put_call(lane, call)
        return call.future.result()

    def configure(self, forward: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int, batch_wait_ms: float,
                  on_batch: Callable[[int, float], None] | None = None) -> None:
        """Attach the loaded model's forward (and the batching policy that depends on its device)."""
        self._forward = forward
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._on_batch = on_batch

    def add_model(self, name: str, forward: Callable[[torch.Tensor], torch.Tensor],
                  on_batch: Callable[[int, float], None] | None = None) -> None:
        """Another model on the same lanes: jobs submitted with ``model=name`` run ``forward``."""
        self._models[name] = _Model(forward, on_batch)

    @property
    def depth(self) -> int:
        """Requests waiting for a lane."""
        return len(self._work)

    async def submit(self, tensor: torch.Tensor, timeout_s: float, model: str | None = None) -> np.ndarray:
        """Queue one (3,S,S) tensor for ``model`` (a name from ``add_model``; None: the default model) and wait
        for its (S,S) probability map."""
        if model is not None and model not in self._models:
            raise KeyError(f"no model {model!r} on these lanes")
        job = _Job(tensor, model)
        if not self._work.put_job(job):
            raise ApiError(503, "the service is at capacity; retry shortly", {"Retry-After": "1"}, reason="queue_full")
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout_s)
        except asyncio.TimeoutError:
            job.future.cancel()
            raise ApiError(503, f"the model did not answer within {timeout_s:g}s; retry later",
                           {"Retry-After": "5"}, reason="timeout") from None

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued, then stop the lanes."""
        self._work.close()
        for thread in self._threads:
            thread.join(timeout_s)

    def _run(self, lane: int) -> None:
        while True:
            item = self._work.take(lane)
            if isinstance(item, _Stop):
                return
            if isinstance(item, _Call):
                if item.threads is not None:
                    use_intra_op_threads(item.threads)
                self._run_call(item)
                continue
            assert isinstance(item, _Job)
            jobs = self._collect(lane, item)
            if not jobs:
                if lane == 0:
                    self._work.lane0_idle()
                continue
            with self.cores.claim(lane, more_waiting=len(self._work) > 0) as threads:
                if self.lanes > 1:
                    use_intra_op_threads(threads)  # checked before every pass: torch may reset it
                outcome = self._compute(jobs)
            if lane == 0:  # before answering: a client's next request must find lane 0 free
                self._work.lane0_idle()
            self._deliver(jobs, outcome)

    def _collect(self, lane: int, first: _Job) -> list[_Job]:
        """``first`` and whatever else arrives within the batch wait, up to ``max_batch``; minus cancelled jobs."""
        jobs = [first]
        deadline = time.perf_counter() + self.batch_wait_s
        while len(jobs) < self.max_batch:
            item = self._work.take(lane, max(0.0, deadline - time.perf_counter()), model=first.model)
            if item is None or isinstance(item, _Stop):
                break
            if isinstance(item, _Call):
                self._run_call(item)
                continue
            jobs.append(item)
        return [j for j in jobs if j.future.set_running_or_notify_cancel()]

    @staticmethod
    def _run_call(call: _Call) -> None:
        try:
            call.future.set_result(call.fn())
        except BaseException as exc:  # handed to the caller of call(), which re-raises it
            call.future.set_exception(exc)

    def _compute(self, jobs: list[_Job]) -> np.ndarray | BaseException:
        """The batch's probability maps, or the exception to hand to each of its callers."""
        model = jobs[0].model
        forward, on_batch = (self._forward, self._on_batch) if model is None else (
            self._models[model].forward, self._models[model].on_batch)
        started = time.perf_counter()
        try:
            probs = forward(torch.stack([job.tensor for job in jobs])).numpy()  # type: ignore[misc]
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of device memory on a batch of %d; answering 503", len(jobs))
            return ApiError(503, "the model ran out of device memory; retry later or with fewer concurrent "
                                 "requests", {"Retry-After": "5"}, reason="out_of_memory")
        except Exception as exc:  # a bug, not bad input: surface it to each caller as a 500
            log.exception("model forward failed")
            return exc
        if on_batch is not None:
            on_batch(len(jobs), time.perf_counter() - started)
        return probs

    @staticmethod
    def _deliver(jobs: list[_Job], outcome: np.ndarray | BaseException) -> None:
        if isinstance(outcome, BaseException):
            for job in jobs:
                job.future.set_exception(outcome)
            return
        for job, prob in zip(jobs, outcome, strict=True):
            job.future.set_result(prob)

