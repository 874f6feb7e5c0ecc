"""Overload and faults: a full queue answers 503 + Retry-After, out-of-memory is a 503 the service survives,
the event loop stays free while the model works, and batching does not change the answers."""
from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.factories import blob_image, jpeg_bytes

PHOTOS = [jpeg_bytes(blob_image(80, 60, seed=i)[0]) for i in range(4)]


def post(client: TestClient, data: bytes):  # noqa: ANN201
    return client.post("/segment", files={"image": ("p.jpg", data, "image/jpeg")})


def app_client(checkpoint: Path, **overrides: object) -> TestClient:
    return TestClient(create_app(Settings(checkpoint=checkpoint, device="cpu", _env_file=None, **overrides)))


class HeldModel:
    """The model's forward pass held until ``release()``: ``entered`` is set when a pass starts. Tests wait on
    these events, never on the clock."""

    def __init__(self, client: TestClient) -> None:
        self.runner = client.app.state.service.runner
        self.real = self.runner._forward
        self.entered, self.gate = threading.Event(), threading.Event()
        self.runner._forward = self._held

    def _held(self, batch: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(60), "the test never released the model"
        return self.real(batch)

    def release(self) -> None:
        self.gate.set()

    def wait_until_queued(self, depth: int) -> None:
        """Until ``depth`` requests wait for the model: a bounded wait on a state, not a time."""
        for _ in range(6000):
            if self.runner.depth == depth:
                return
            time.sleep(0.01)
        raise AssertionError(f"the queue never reached {depth} (it holds {self.runner.depth})")


def test_full_queue_answers_503_with_retry_after_and_remove_bg_429(tiny_checkpoint: Path) -> None:
    """One request holds the only lane, one waits in the queue; the next /segment is a 503 with Retry-After, and
    the same on remove.bg's route is its rate limit: 429 with Retry-After and X-RateLimit-*."""
    with app_client(tiny_checkpoint, max_queue=1, model_lanes=1, max_batch=1) as client:
        model = HeldModel(client)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, client, PHOTOS[0])
            assert model.entered.wait(60)
            second = pool.submit(post, client, PHOTOS[1])
            model.wait_until_queued(1)
            refused = post(client, PHOTOS[2])
            limited = client.post("/v1.0/removebg", files={"image_file": ("p.jpg", PHOTOS[3], "image/jpeg")})
            model.release()
            assert first.result().status_code == 200 and second.result().status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] and "capacity" in refused.json()["detail"]
    assert limited.status_code == 429, limited.text
    assert limited.json()["errors"][0]["code"] == "rate_limit_exceeded"
    assert limited.headers["retry-after"] == "1" and limited.headers["x-ratelimit-limit"] == "1"
    assert limited.headers["x-ratelimit-remaining"] == "0" and int(limited.headers["x-ratelimit-reset"]) > 0


def test_out_of_memory_is_a_503_and_the_service_keeps_serving(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint) as client:
        runner = client.app.state.service.runner
        real = runner._forward

        def oom(batch: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        runner._forward = oom
        response = post(client, PHOTOS[0])
        assert response.status_code == 503
        assert "out of device memory" in response.json()["detail"] and response.headers["retry-after"]
        runner._forward = real
        assert post(client, PHOTOS[0]).status_code == 200


def test_health_answers_while_the_model_is_busy(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint) as client:
        model = HeldModel(client)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(post, client, PHOTOS[0])
            assert model.entered.wait(60)
            assert client.get("/health").status_code == 200
            assert not busy.done()  # /health answered while the segmentation was held in the model
            model.release()
            assert busy.result().status_code == 200


def _masks(client: TestClient) -> list[str]:
    with ThreadPoolExecutor(4) as pool:
        return [r.json()["mask_png"] for r in pool.map(lambda d: post(client, d), PHOTOS)]


def test_micro_batching_gives_the_same_masks(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint, max_batch=1, precision="fp32") as single:
        expected = _masks(single)
    with app_client(tiny_checkpoint, max_batch=4, batch_wait_ms=200, precision="fp32", model_lanes=1) as batched:
        sizes: list[int] = []
        runner = batched.app.state.service.runner
        real = runner._forward
        runner._forward = lambda batch: (sizes.append(batch.shape[0]), real(batch))[1]
        got = _masks(batched)
    assert max(sizes) > 1  # batches really formed
    assert [base64.b64decode(m) for m in got] == [base64.b64decode(m) for m in expected]


def test_concurrent_requests_are_safe_and_deterministic(client: TestClient) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(client, PHOTOS[1]), range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["mask_png"] for r in responses}) == 1


@pytest.mark.parametrize("value", ["2", "-1"])
def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from app.config import SettingsError, load_settings

    monkeypatch.setenv("PETSEG_THRESHOLD", value)
    with pytest.raises(SettingsError, match="PETSEG_THRESHOLD"):
        load_settings()


def metric_value(client: TestClient, text: str) -> float:
    """The value of the /metrics line that starts with ``text`` (0 when absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(text + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_full_queue_shows_in_the_queue_depth_and_each_refusal_is_counted_with_its_reason(
        tiny_checkpoint: Path) -> None:
    """Deterministic: the model is held by an event, not slowed by a sleep. One request holds the only lane,
    one waits in the queue (depth 1), the next is refused (503, reason queue_full)."""
    with app_client(tiny_checkpoint, max_queue=1, model_lanes=1, max_batch=1) as client:
        model = HeldModel(client)
        counted = 'petseg_rejected_total{reason="queue_full"}'
        before = metric_value(client, counted)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, client, PHOTOS[0])
            assert model.entered.wait(60)
            second = pool.submit(post, client, PHOTOS[1])
            model.wait_until_queued(1)
            assert metric_value(client, "petseg_queue_depth") == 1.0
            refused = post(client, PHOTOS[2])
            model.release()
            assert first.result().status_code == 200 and second.result().status_code == 200
        assert refused.status_code == 503 and "capacity" in refused.json()["detail"]
        assert metric_value(client, counted) == before + 1
        assert metric_value(client, "petseg_queue_depth") == 0.0


def test_a_request_the_model_does_not_answer_in_time_is_counted_as_a_timeout(tiny_checkpoint: Path) -> None:
    gate = threading.Event()
    with app_client(tiny_checkpoint, request_timeout_s=0.2) as client:
        runner = client.app.state.service.runner
        real = runner._forward

        def held(batch: torch.Tensor) -> torch.Tensor:
            gate.wait(60)
            return real(batch)

        runner._forward = held
        counted = 'petseg_rejected_total{reason="timeout"}'
        before = metric_value(client, counted)
        answer = post(client, PHOTOS[0])
        gate.set()
        assert answer.status_code == 503 and "did not answer" in answer.json()["detail"]
        assert metric_value(client, counted) == before + 1
