"""The core gate: the forward pass never overlaps request-side CPU work, and neither side starves."""
from __future__ import annotations

import threading
import time

from app.coregate import CoreGate


class Recorder:
    """Tracks how many holders of each kind are inside at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shared = self.exclusive = self.max_shared = 0
        self.overlaps = 0
        self.order: list[str] = []

    def enter(self, kind: str) -> None:
        with self.lock:
            if kind == "shared":
                self.shared += 1
                self.max_shared = max(self.max_shared, self.shared)
            else:
                self.exclusive += 1
            if self.exclusive and (self.shared or self.exclusive > 1):
                self.overlaps += 1
            self.order.append(kind)

    def leave(self, kind: str) -> None:
        with self.lock:
            if kind == "shared":
                self.shared -= 1
            else:
                self.exclusive -= 1


def _hold(gate: CoreGate, recorder: Recorder, kind: str, seconds: float) -> None:
    with gate.shared() if kind == "shared" else gate.exclusive():
        recorder.enter(kind)
        time.sleep(seconds)
        recorder.leave(kind)


def _run_all(gate: CoreGate, recorder: Recorder, kinds: list[str], seconds: float = 0.01) -> None:
    threads = [threading.Thread(target=_hold, args=(gate, recorder, kind, seconds)) for kind in kinds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "the gate deadlocked"


def test_exclusive_never_overlaps_anything_and_shared_is_capped() -> None:
    gate, recorder = CoreGate(2), Recorder()
    _run_all(gate, recorder, ["shared", "exclusive"] * 8 + ["shared"] * 8)
    assert recorder.overlaps == 0
    assert recorder.max_shared == 2  # shared work did run side by side, up to the cap
    assert recorder.order.count("exclusive") == 8 and recorder.order.count("shared") == 16


def test_a_waiting_forward_pass_goes_before_new_shared_work() -> None:
    gate, recorder = CoreGate(1), Recorder()
    first = threading.Thread(target=_hold, args=(gate, recorder, "shared", 0.2))
    first.start()
    time.sleep(0.05)  # the first shared holder is inside
    forward = threading.Thread(target=_hold, args=(gate, recorder, "exclusive", 0.01))
    forward.start()
    time.sleep(0.05)  # the forward pass is waiting
    late = threading.Thread(target=_hold, args=(gate, recorder, "shared", 0.01))
    late.start()
    for thread in (first, forward, late):
        thread.join(5)
    assert recorder.order == ["shared", "exclusive", "shared"]


def test_a_disabled_gate_lets_everything_overlap() -> None:
    gate, recorder = CoreGate(1, enabled=False), Recorder()
    _run_all(gate, recorder, ["exclusive", "shared", "shared", "exclusive"], seconds=0.1)
    assert recorder.overlaps > 0 and recorder.max_shared == 2
