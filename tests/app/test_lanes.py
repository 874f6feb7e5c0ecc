"""Model lanes: who runs a forward pass, on how many threads, and that lanes change no answer."""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from app.batching import BatchRunner
from app.cores import CoreShare
from tests.app.helpers import app_client, mask_array
from tests.factories import blob_image, jpeg_bytes

WAIT_S = 30.0
PAIR_WAIT_S = 2.0  # how long an unpaired pass waits for a partner: a bound on the test's length, not a condition


# --- CoreShare ------------------------------------------------------------------------------------------------

def test_a_pass_alone_on_lane_0_gets_every_core() -> None:
    share = CoreShare(cores=4, lanes=2)
    with share.claim(0, more_waiting=False) as threads:
        assert threads == 4


def test_queued_work_or_a_running_pass_means_a_share() -> None:
    share = CoreShare(cores=4, lanes=2)
    with share.claim(0, more_waiting=True) as threads:
        assert threads == 2
    with share.claim(1, more_waiting=False) as running, share.claim(0, more_waiting=False) as beside:
        assert (running, beside) == (2, 2)


def test_only_lane_0_ever_runs_alone() -> None:
    with CoreShare(cores=2, lanes=2).claim(1, more_waiting=False) as threads:
        assert threads == 1


def test_one_lane_always_gets_every_core() -> None:
    share = CoreShare(cores=3, lanes=1)
    with share.claim(0, more_waiting=True) as threads:
        assert threads == 3


class WatchedCondition(threading.Condition):
    """A condition that says when a thread has started waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()  # under the lock: the waiter blocks right after, before anyone can notify it
        return super().wait(timeout)


def test_a_pass_alone_holds_the_others_back_and_they_then_share() -> None:
    """Deterministic: the other lane is seen blocked on the share's condition, not given time to start."""
    share = CoreShare(cores=2, lanes=2)
    share._cond = WatchedCondition()
    got: list[int] = []

    def other_lane() -> None:
        with share.claim(1, more_waiting=False) as threads:
            got.append(threads)

    with share.claim(0, more_waiting=False) as threads:
        assert threads == 2
        waiter = threading.Thread(target=other_lane)
        waiter.start()
        assert share._cond.waiting.wait(WAIT_S), "the other lane never waited for its turn"
        assert got == [], "a pass started beside one that had all the cores"
    waiter.join(WAIT_S)
    assert got == [1]


# --- BatchRunner with lanes -----------------------------------------------------------------------------------

class Recorder:
    """A forward pass that records where it ran, with how many threads, and in what order it started and ended
    (a counter, not a clock); ``hold`` keeps it running. With ``pair`` set, a pass on a share of the cores waits
    for a second one to start beside it, so "side by side" is made to happen rather than left to timing."""

    def __init__(self) -> None:
        self.passes: list[tuple[str, int, int, int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.lock = threading.Lock()
        self.ticks = 0
        self.entered = 0
        self.pair: threading.Barrier | None = None

    def _tick(self) -> int:
        with self.lock:
            self.ticks += 1
            return self.ticks

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        started = self._tick()
        with self.lock:
            self.entered += 1
        self.hold.wait(WAIT_S)
        if self.pair is not None and torch.get_num_threads() == 1:
            try:
                self.pair.wait(PAIR_WAIT_S)  # the last, unpaired pass goes on alone when the wait runs out
            except threading.BrokenBarrierError:
                self.pair = None
        ended = self._tick()
        with self.lock:
            self.passes.append((threading.current_thread().name, torch.get_num_threads(), started, ended))
        return batch.float().mean(dim=1)


def submit_all(runner: BatchRunner, count: int, *, concurrently: bool) -> list[np.ndarray]:
    async def one() -> np.ndarray:
        return await runner.submit(torch.full((3, 4, 4), 7, dtype=torch.uint8), WAIT_S)

    async def main() -> list[np.ndarray]:
        if concurrently:
            return list(await asyncio.gather(*(one() for _ in range(count))))
        return [await one() for _ in range(count)]

    return asyncio.run(main())


@pytest.fixture
def recorded_runner() -> Iterator[tuple[BatchRunner, Recorder]]:
    recorder = Recorder()
    runner = BatchRunner(recorder, lanes=2, cores=2)
    yield runner, recorder
    runner.close()


def test_requests_one_after_another_run_alone_on_lane_0_with_every_core(recorded_runner) -> None:  # noqa: ANN001
    runner, recorder = recorded_runner
    results = submit_all(runner, 6, concurrently=False)
    assert all(np.array_equal(r, np.full((4, 4), 7.0)) for r in results)
    assert [(name, threads) for name, threads, _, _ in recorder.passes] == [("petseg-model-0", 2)] * 6


def test_concurrent_requests_run_side_by_side_on_a_core_each(recorded_runner) -> None:  # noqa: ANN001
    runner, recorder = recorded_runner
    recorder.pair = threading.Barrier(2)
    submit_all(runner, 8, concurrently=True)
    assert len(recorder.passes) == 8
    lanes = {name for name, _, _, _ in recorder.passes}
    assert lanes == {"petseg-model-0", "petseg-model-1"}
    single = [p for p in recorder.passes if p[1] == 1]
    assert len(single) >= 6, recorder.passes  # at most the first and the last may have run alone
    overlapping = any(a[0] != b[0] and a[2] < b[3] and b[2] < a[3]
                      for a in recorder.passes for b in recorder.passes)
    assert overlapping, "no two passes ever ran at the same time"
    for a in recorder.passes:  # a pass with every core never overlaps another
        if a[1] == 2:
            assert not any(b is not a and b[2] < a[3] and a[2] < b[3] for b in recorder.passes), a


def test_calls_run_on_the_lane_they_name_with_the_threads_they_ask() -> None:
    runner = BatchRunner(lambda b: b, lanes=2, cores=2)
    try:
        assert runner.call(lambda: threading.current_thread().name) == "petseg-model-0"
        assert runner.call(lambda: (threading.current_thread().name, torch.get_num_threads()), lane=1,
                           threads=1) == ("petseg-model-1", 1)
    finally:
        runner.close()


def test_close_finishes_what_is_queued_on_every_lane() -> None:
    recorder = Recorder()
    runner = BatchRunner(recorder, lanes=2, cores=2)
    recorder.hold.clear()

    async def main() -> list[np.ndarray]:
        tasks = [asyncio.ensure_future(runner.submit(torch.zeros(3, 4, 4, dtype=torch.uint8), WAIT_S))
                 for _ in range(5)]
        for _ in range(3000):  # until all five are queued or held in a pass: a bounded wait on a state
            if runner.depth + recorder.entered == 5:
                break
            await asyncio.sleep(0.01)
        assert runner.depth + recorder.entered == 5
        closing = asyncio.get_running_loop().run_in_executor(None, runner.close)
        recorder.hold.set()
        await closing
        return list(await asyncio.gather(*tasks))

    assert len(asyncio.run(main())) == 5
    assert len(recorder.passes) == 5
    assert not any(thread.is_alive() for thread in runner._threads)


# --- the service with lanes -----------------------------------------------------------------------------------

PHOTOS = [jpeg_bytes(blob_image(96 + 8 * i, 80, seed=i)[0]) for i in range(6)]


def _answers(client) -> list[tuple[np.ndarray, float]]:  # noqa: ANN001
    def post(data: bytes):  # noqa: ANN202
        return client.post("/segment", files={"image": ("p.jpg", data, "image/jpeg")})

    with ThreadPoolExecutor(len(PHOTOS)) as pool:
        responses = list(pool.map(post, PHOTOS))
    assert [r.status_code for r in responses] == [200] * len(PHOTOS)
    return [(mask_array(r.json()), r.json()["foreground_probability"]) for r in responses]


def test_two_lanes_give_the_answers_of_one(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint, model_lanes=1) as one:
        expected = _answers(one)
        assert one.get("/model").json()["model_lanes"] == 1
    with app_client(tiny_checkpoint, model_lanes=2) as two:
        runner = two.app.state.service.runner
        threads_seen: list[int] = []
        real = runner._forward
        runner._forward = lambda batch: (threads_seen.append(torch.get_num_threads()), real(batch))[1]
        got = _answers(two)
        assert two.get("/model").json()["model_lanes"] == 2
    assert len(threads_seen) == len(PHOTOS)
    for (mask, prob), (want_mask, want_prob) in zip(got, expected, strict=True):
        assert np.mean(mask != want_mask) <= 0.005
        assert prob == pytest.approx(want_prob, abs=1e-4)


def test_auto_lanes_are_two_on_a_cpu_with_two_or_three_cores(tiny_checkpoint: Path) -> None:
    from app.cores import usable_cores

    with app_client(tiny_checkpoint) as client:
        lanes = client.app.state.service.runner.lanes
    assert lanes == (2 if 2 <= usable_cores() <= 3 else 1)


def test_warm_up_runs_every_batch_size_on_every_lane_at_its_share(tiny_checkpoint: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled model is specialised per thread count: a batch size a lane never warmed at its share would be
    compiled while a request waits (measured: seconds per request with micro-batching on two lanes)."""
    from models.engine.segmenter import Segmenter

    warmed: list[tuple[str, int, tuple[int, ...]]] = []
    real = Segmenter.warmup

    def recording(self: Segmenter, batch_sizes: tuple[int, ...] = (1,)) -> float:
        warmed.append((threading.current_thread().name, torch.get_num_threads(), tuple(batch_sizes)))
        return real(self, batch_sizes)

    monkeypatch.setattr(Segmenter, "warmup", recording)
    with app_client(tiny_checkpoint, model_lanes=2, max_batch=4):
        pass
    cores = warmed[0][1]
    share = max(1, cores // 2)
    assert warmed[0] == ("petseg-model-0", cores, (1, 4))
    assert sorted(warmed[1:]) == [("petseg-model-0", share, (1, 4)), ("petseg-model-1", share, (1, 4))]


# --- request work and the scheduler ------------------------------------------------------------------------

needs_sched_batch = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this OS")


@needs_sched_batch
def test_defer_to_model_lanes_sets_batch_policy_on_the_calling_thread_only() -> None:
    from app.cores import defer_to_model_lanes

    before = os.sched_getscheduler(0)
    seen: list[tuple[bool, int]] = []
    thread = threading.Thread(target=lambda: seen.append((defer_to_model_lanes(), os.sched_getscheduler(0))))
    thread.start()
    thread.join(WAIT_S)
    assert seen == [(True, os.SCHED_BATCH)]
    assert os.sched_getscheduler(0) == before


@needs_sched_batch
@pytest.mark.parametrize("lanes", [1, 2])
def test_request_work_defers_to_the_forward_passes_only_with_several_lanes(
        tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, lanes: int) -> None:
    import app.service
    from app.cores import defer_to_model_lanes

    policies: dict[int, int] = {}

    def recording() -> bool:
        deferred = defer_to_model_lanes()
        policies[threading.get_native_id()] = os.sched_getscheduler(0)
        return deferred

    monkeypatch.setattr(app.service, "defer_to_model_lanes", recording)
    with app_client(tiny_checkpoint, model_lanes=lanes) as client:
        assert client.post("/segment", files={"image": ("a.jpg", PHOTOS[0], "image/jpeg")}).status_code == 200
    if lanes == 1:
        assert policies == {}
    else:  # the event loop's thread and the pool threads that decode and encode
        assert len(policies) >= 2 and set(policies.values()) == {os.SCHED_BATCH}
