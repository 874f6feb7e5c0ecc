"""Keep the CPU forward pass from sharing its cores with request pre- and post-processing.

On the CPU the forward pass runs one OpenMP thread per core, and each parallel region ends at a barrier: when
a decoding or PNG-encoding thread takes one of those cores, the whole pass waits for the descheduled OpenMP
thread. The gate turns the overlap into turns: the forward pass holds the CPU alone (``exclusive``), and up to
one decode or encode per core runs between forward passes (``shared``). A waiting forward pass goes first, so
the model is never starved by a stream of new uploads.

Measured on 2 cores at concurrency 4 (``PETSEG_EXCLUSIVE_FORWARD``): with an httpx load generator on the same
machine, the UNet went from 16.7 to 20.2 img/s; with a lean load generator, ResNet34_UNet was 5% slower with the
gate (43-44 against 45-46 img/s) and the UNet within noise. Off by default, for that reason.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["CoreGate", "usable_cores"]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class CoreGate:
    """A readers-writer gate with writer preference; ``enabled=False`` makes both sides no-ops (GPU)."""

    def __init__(self, max_shared: int, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._max_shared = max(1, max_shared)
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Request-side CPU work: decoding, resizing, encoding. Up to ``max_shared`` at once."""
        if not self.enabled:
            yield
            return
        with self._cond:
            while self._exclusive or self._exclusive_waiting or self._shared >= self._max_shared:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The forward pass: waits for running shared work to finish, blocks new shared work."""
        if not self.enabled:
            yield
            return
        with self._cond:
            self._exclusive_waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
