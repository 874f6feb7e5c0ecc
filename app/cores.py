"""How many CPU cores each forward pass gets when several model lanes share the machine.

On the CPU a forward pass spreads every layer over one OpenMP thread per core, and each parallel region ends at
a barrier. Under load that costs twice: the threads spend time waiting for each other, and when a request thread
(decoding, PNG encoding, HTTP) takes one of those cores the whole pass stalls until the descheduled thread
returns. Two passes at once on half the cores each do neither: with one thread per pass there is no barrier, and a
request thread only slows the pass it preempts. Measured on 2 cores with ResNet34_UNet at 256x256: one pass on
both cores 70 img/s, two single-core passes at once 84 img/s.

One pass on all the cores still has the lowest latency, so a pass on lane 0 that would run alone gets them all,
and others wait for it to finish; a pass that starts while another is running gets its lane's share. Only lane 0
ever runs on all the cores: every thread that runs kernels keeps its own OpenMP pool, and once the pools hold more
threads than there are cores libgomp stops spinning at barriers and every pass slows down (measured: 50 against
29 ms). So the other lanes' share must be one thread (cores < 2 x lanes) for their pools to stay empty.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from models.engine.runtime import usable_cores

__all__ = ["CoreShare", "defer_to_model_lanes", "usable_cores"]

_this_thread = threading.local()


def defer_to_model_lanes() -> bool:
    """Make the calling thread's CPU work wait for the running forward pass's time slice instead of cutting
    in (Linux ``SCHED_BATCH``); once per thread. True when the thread runs under that policy.

    Under load the lanes keep every core busy, and each request's own work (HTTP, decoding, resizing, the
    PNG: ~5 ms for a 500x375 photo) wakes up several times. A waking thread normally preempts the pass on its
    core at once, and the pass resumes with part of its cache gone. A batch thread gets the same share of CPU
    but waits for the end of the pass's time slice, or of the pass. Measured on 2 cores, ResNet34_UNet at
    concurrency 4: about 3-4% more images a second. Elsewhere (no such policy, or not allowed): a no-op.
    """
    if getattr(_this_thread, "deferred", None) is None:
        _this_thread.deferred = False
        if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH"):
            try:
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0: the calling thread
                _this_thread.deferred = True
            except OSError:
                pass
    return bool(_this_thread.deferred)


class CoreShare:
    """Hands each forward pass a thread count: ``cores`` when it runs alone, ``cores // lanes`` beside others."""

    def __init__(self, cores: int, lanes: int) -> None:
        self.cores = max(1, cores)
        self.lanes = max(1, lanes)
        self.share = max(1, self.cores // self.lanes)
        self._cond = threading.Condition()
        self._sharing = 0  # passes running on a share
        self._alone = False  # a pass running on all the cores

    @contextlib.contextmanager
    def claim(self, lane: int, *, more_waiting: bool) -> Iterator[int]:
        """Wait for a turn and yield the number of threads to use. Only lane 0 may run alone on all the cores;
        ``more_waiting``: other work is queued, so the pass would not be alone for long and takes a share."""
        with self._cond:
            waited = False
            while self._alone:
                waited = True  # contention: the next passes will overlap, so take a share
                self._cond.wait()
            alone = self.lanes == 1 or (lane == 0 and self._sharing == 0 and not more_waiting and not waited)
            if alone:
                self._alone = True
            else:
                self._sharing += 1
        try:
            yield self.cores if alone else self.share
        finally:
            with self._cond:
                if alone:
                    self._alone = False
                else:
                    self._sharing -= 1
                self._cond.notify_all()
