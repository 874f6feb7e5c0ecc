"""Operating the service: health and readiness, model facts, docs, metrics, request ids, API key, CORS,
start-up failures, settings, and behaviour under concurrency, batching, out-of-memory and a full queue."""
from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models.checkpoint import CheckpointError
from tests.app.helpers import app_client, image_files, make_settings, mask_array, swap_forward
from tests.factories import blob_image, jpeg_bytes, make_checkpoint, png_bytes

PHOTOS = [jpeg_bytes(blob_image(64, 48, seed=10 + i)[0]) for i in range(4)]
# Photos the (randomly initialised, nearly input-blind) test model still tells apart by mean probability, so a
# batch that hands answers to the wrong requests is caught: black, white, a gradient and a blob, lossless.
DISTINCT = [png_bytes(np.zeros((48, 64, 3), dtype=np.uint8)),
            png_bytes(np.full((48, 64, 3), 255, dtype=np.uint8)),
            png_bytes(np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (48, 1, 3))),
            png_bytes(blob_image(64, 48, seed=1)[0])]
WAIT_S = 30.0  # generous upper bound for waits on events; never asserted as a duration


@pytest.fixture(scope="module")
def api(tiny_checkpoint: Path) -> Iterator[TestClient]:
    """A warm app shared by the read-only tests of this module."""
    with app_client(tiny_checkpoint) as client:
        yield client


def post(client: TestClient, data: bytes = PHOTOS[0], **kwargs: object):  # noqa: ANN201
    return client.post("/segment", files=image_files(data), **kwargs)


def wait_until(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


# --- health, readiness, model facts -------------------------------------------------------------------------

def test_health_is_200_ok(api: TestClient) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_is_503_before_lifespan_and_200_after(settings: Settings) -> None:
    client = TestClient(create_app(settings))  # not entered: the lifespan has not run, no model loaded
    before = client.get("/ready")
    assert before.status_code == 503
    assert before.json() == {"ready": False, "detail": "starting"}
    assert before.headers["retry-after"] == "2"
    with client:
        after = client.get("/ready")
    assert after.status_code == 200
    assert after.json() == {"ready": True, "detail": "model loaded and warm"}


def test_segment_before_lifespan_is_503_not_loaded(settings: Settings) -> None:
    client = TestClient(create_app(settings))
    response = post(client)
    assert response.status_code == 503
    assert response.json()["detail"] == "the model is not loaded yet; retry shortly"
    assert response.headers["retry-after"] == "2"


def test_health_is_200_before_lifespan(settings: Settings) -> None:
    response = TestClient(create_app(settings)).get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_model_describes_the_served_checkpoint(client: TestClient, tiny_checkpoint: Path) -> None:
    response = client.get("/model")
    assert response.status_code == 200
    info = response.json()
    assert info["arch"] == "resnet34_unet"
    assert info["parameters"] > 0
    assert info["device"] == "cpu"
    assert info["dtype"] in {"fp32", "bf16", "fp16"}
    assert info["input_size"] == 64
    assert info["checkpoint_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert info["checkpoint_file"] == str(tiny_checkpoint)
    assert info["epoch"] == 1
    assert info["validation_dice"] == 0.5
    assert info["max_batch"] == 1  # auto on CPU
    assert info["compiled"] is False  # the suite sets PETSEG_COMPILE=off


def test_model_reports_requested_precision(api: TestClient) -> None:
    assert api.get("/model").json()["dtype"] == "fp32"


# --- docs and metrics ---------------------------------------------------------------------------------------

def test_docs_is_html(api: TestClient) -> None:
    response = api.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower() and "/openapi.json" in response.text


def test_openapi_documents_segment_form_fields(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    post_op = spec["paths"]["/segment"]["post"]
    ref = post_op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert set(body["properties"]) == {"image", "image_url", "ground_truth", "threshold", "output", "soft",
                                        "background", "background_image", "crop", "crop_margin", "model"}
    assert "required" not in body  # image or image_url: the route insists on exactly one
    assert all(body["properties"][name].get("description") for name in body["properties"])
    assert {p["name"] for p in post_op["parameters"]} == {"format"}
    assert {"200", "400", "403", "413", "415", "422", "503"} <= set(post_op["responses"])
    assert "image/png" in post_op["responses"]["200"]["content"]


def test_openapi_documents_segment_response_fields(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    ok = spec["paths"]["/segment"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SegmentResponse")
    fields = spec["components"]["schemas"]["SegmentResponse"]["properties"]
    assert set(fields) >= {"width", "height", "threshold", "foreground_probability", "foreground_fraction",
                           "dice", "mask_png", "output", "output_png", "model", "inference_ms"}
    undocumented = [name for name, field in fields.items()
                    if name != "model" and not field.get("description")]
    assert undocumented == []


def counter(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text; 0 when the series does not exist yet."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return 0.0


def test_metrics_is_prometheus_text(api: TestClient) -> None:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE petseg_http_requests_total counter" in response.text
    assert "# TYPE petseg_inference_seconds histogram" in response.text
    info = [line for line in response.text.splitlines() if line.startswith("petseg_model_info{")]
    assert any('arch="resnet34_unet"' in line and 'model="default"' in line for line in info), info


def test_metrics_segment_request_counter_increases(api: TestClient) -> None:
    labels = {"method": "POST", "route": "/segment", "status": "200"}
    before = counter(api.get("/metrics").text, "petseg_http_requests_total", **labels)
    assert post(api).status_code == 200
    after = counter(api.get("/metrics").text, "petseg_http_requests_total", **labels)
    assert after == before + 1


def test_metrics_unknown_path_is_counted_as_other(api: TestClient) -> None:
    labels = {"method": "GET", "route": "other", "status": "404"}
    before = counter(api.get("/metrics").text, "petseg_http_requests_total", **labels)
    assert api.get("/no/such/page").status_code == 404
    assert counter(api.get("/metrics").text, "petseg_http_requests_total", **labels) == before + 1


# --- request ids --------------------------------------------------------------------------------------------

def test_request_id_is_echoed_when_sent(api: TestClient) -> None:
    response = api.get("/health", headers={"X-Request-ID": "trace-abc-123"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-abc-123"


def test_request_id_is_generated_when_absent(api: TestClient) -> None:
    first, second = api.get("/health"), api.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_request_id_is_on_error_answers(api: TestClient) -> None:
    response = api.post("/segment", files=image_files(b""), headers={"X-Request-ID": "bad-upload-1"})
    assert response.status_code == 400
    assert response.json()["detail"] == "image is empty"
    assert response.headers["x-request-id"] == "bad-upload-1"


# --- API key ------------------------------------------------------------------------------------------------

KEY = "s3cret"
UNAUTHORIZED = "missing or wrong API key (send X-API-Key)"


@pytest.fixture(scope="module")
def keyed(tiny_checkpoint: Path) -> Iterator[TestClient]:
    with app_client(tiny_checkpoint, api_key=KEY) as client:
        yield client


@pytest.mark.parametrize("method, path", [("POST", "/segment"), ("GET", "/model"), ("GET", "/models"),
                                          ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs")])
def test_api_key_missing_is_401(keyed: TestClient, method: str, path: str) -> None:
    response = keyed.request(method, path, files=image_files(PHOTOS[0]) if method == "POST" else None)
    assert response.status_code == 401
    assert response.json() == {"detail": UNAUTHORIZED}
    assert response.headers["www-authenticate"] == "Bearer"


def test_api_key_wrong_is_401(keyed: TestClient) -> None:
    response = post(keyed, headers={"X-API-Key": "s3cret-not"})
    assert response.status_code == 401
    assert response.json()["detail"] == UNAUTHORIZED


def test_api_key_header_is_accepted(keyed: TestClient) -> None:
    response = post(keyed, headers={"X-API-Key": KEY})
    assert response.status_code == 200
    assert response.json()["width"] == 64


def test_api_key_bearer_is_accepted(keyed: TestClient) -> None:
    response = post(keyed, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.json()["height"] == 48


def test_api_key_opens_model(keyed: TestClient) -> None:
    assert keyed.get("/model").status_code == 401
    response = keyed.get("/model", headers={"X-API-Key": KEY})
    assert response.status_code == 200
    assert response.json()["arch"] == "resnet34_unet"


def test_api_key_not_needed_for_health(keyed: TestClient) -> None:
    response = keyed.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_api_key_not_needed_for_ready_probe(keyed: TestClient) -> None:
    response = keyed.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "detail": "model loaded and warm"}


# --- CORS ---------------------------------------------------------------------------------------------------

def test_cors_closed_by_default(api: TestClient) -> None:
    response = api.get("/health", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture(scope="module")
def cors(tiny_checkpoint: Path) -> TestClient:
    """No lifespan: CORS answers do not need the model."""
    return TestClient(create_app(make_settings(tiny_checkpoint, cors_origins=["http://good.example"],
                                               api_key=KEY)))


def test_cors_open_for_configured_origin(cors: TestClient) -> None:
    response = cors.get("/health", headers={"Origin": "http://good.example"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://good.example"


def test_cors_still_closed_for_other_origins(cors: TestClient) -> None:
    response = cors.get("/health", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_preflight_passes_without_api_key(cors: TestClient) -> None:
    response = cors.options("/segment", headers={"Origin": "http://good.example",
                                                 "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "x-api-key"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://good.example"
    assert "POST" in response.headers["access-control-allow-methods"]


def test_cors_headers_on_401(cors: TestClient) -> None:
    response = cors.get("/model", headers={"Origin": "http://good.example"})
    assert response.status_code == 401
    assert response.json()["detail"] == UNAUTHORIZED
    assert response.headers["access-control-allow-origin"] == "http://good.example"


# --- start-up failures --------------------------------------------------------------------------------------

def test_startup_missing_checkpoint_fails_and_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "gone.pt"
    application = create_app(make_settings(missing))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        with TestClient(application):
            pass
    assert str(missing) in application.state.startup_error
    assert application.state.ready is False


def test_startup_non_checkpoint_file_fails(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    application = create_app(make_settings(junk))
    with pytest.raises(CheckpointError):
        with TestClient(application):
            pass
    assert application.state.startup_error.startswith(f"cannot read checkpoint {junk}")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("untrained") / "epoch0.pt", image_size=64, epoch=0)


def test_startup_untrained_checkpoint_is_refused(untrained: Path) -> None:
    application = create_app(make_settings(untrained))
    with pytest.raises(CheckpointError, match="untrained"):
        with TestClient(application):
            pass
    assert "untrained weights (epoch 0)" in application.state.startup_error
    assert str(untrained) in application.state.startup_error


def test_startup_untrained_checkpoint_allowed_when_asked(untrained: Path) -> None:
    with app_client(untrained, allow_untrained=True) as client:
        response = client.get("/model")
    assert response.status_code == 200
    assert response.json()["epoch"] == 0


def test_startup_warmup_failure_is_recorded(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    from models.engine.segmenter import Segmenter

    def out_of_memory(self: Segmenter, batch_sizes: object = (1,)) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Segmenter, "warmup", out_of_memory)
    application = create_app(make_settings(tiny_checkpoint))
    with pytest.raises(Exception):  # noqa: B017 - which exception is not the point; the recorded reason is
        with TestClient(application):
            pass
    assert isinstance(application.state.startup_error, str)
    assert "out of memory" in application.state.startup_error


def test_settings_invalid_env_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.config import SettingsError, load_settings

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("PETSEG_THRESHOLD", "2")
    with pytest.raises(SettingsError, match=r"PETSEG_THRESHOLD='2'"):
        load_settings()


def test_settings_invalid_device_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.config import SettingsError, load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETSEG_DEVICE", "tpu")
    with pytest.raises(SettingsError, match=r"PETSEG_DEVICE='tpu'.*expected auto, cpu, cuda or cuda:N"):
        load_settings()


def test_startup_with_invalid_env_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETSEG_MAX_QUEUE", "0")
    application = create_app()
    assert "PETSEG_MAX_QUEUE" in application.state.startup_error
    with pytest.raises(RuntimeError, match="PETSEG_MAX_QUEUE"):
        with TestClient(application):
            pass


# --- concurrency, batching, faults --------------------------------------------------------------------------

def test_segment_concurrent_requests_all_succeed_with_identical_masks(api: TestClient) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(api, PHOTOS[1]), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    masks = [mask_array(r.json()) for r in responses]
    assert all(np.array_equal(masks[0], m) for m in masks[1:])


def test_health_answers_while_the_model_is_busy(api: TestClient) -> None:
    entered, release, exited = threading.Event(), threading.Event(), threading.Event()
    real = api.app.state.service.runner._forward

    def busy(batch: torch.Tensor) -> torch.Tensor:
        entered.set()
        release.wait(WAIT_S)  # hold the model thread until /health has answered
        exited.set()
        return real(batch)

    swap_forward(api, busy)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, api)
            assert entered.wait(WAIT_S)
            health = api.get("/health")
            model_still_busy = not exited.is_set()
            release.set()
            segmented = pending.result()
    finally:
        release.set()
        swap_forward(api, real)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert model_still_busy, "/health only answered once the forward pass had finished"
    assert segmented.status_code == 200


def test_segment_out_of_memory_is_503_and_service_recovers(api: TestClient) -> None:
    def oom(batch: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    real = swap_forward(api, oom)
    try:
        refused = post(api)
    finally:
        swap_forward(api, real)
    assert refused.status_code == 503
    assert refused.json()["detail"].startswith("the model ran out of device memory")
    assert refused.headers["retry-after"] == "5"
    recovered = post(api)
    assert recovered.status_code == 200
    assert recovered.json()["width"] == 64


def test_segment_forward_bug_is_500_and_service_recovers(api: TestClient) -> None:
    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch in a layer")

    real = swap_forward(api, broken)
    try:
        # A second client on the same (already started) app, that returns the 500 instead of re-raising it.
        response = post(TestClient(api.app, raise_server_exceptions=False))
    finally:
        swap_forward(api, real)
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert post(api).status_code == 200


def masks_and_probabilities(client: TestClient) -> list[tuple[np.ndarray, float]]:
    with ThreadPoolExecutor(len(DISTINCT)) as pool:
        responses = list(pool.map(lambda data: post(client, data), DISTINCT))
    assert [r.status_code for r in responses] == [200] * len(DISTINCT)
    return [(mask_array(r.json()), r.json()["foreground_probability"]) for r in responses]


def test_segment_micro_batches_give_the_same_answers(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint, max_batch=1) as single:
        expected = masks_and_probabilities(single)
    probabilities = sorted(p for _, p in expected)
    assert min(np.diff(probabilities)) > 3e-6, "precondition: each photo has its own answer"

    with app_client(tiny_checkpoint, max_batch=4, batch_wait_ms=50, model_lanes=1) as batched:
        runner = batched.app.state.service.runner
        sizes: list[int] = []
        first, release = threading.Event(), threading.Event()
        real = runner._forward

        def gated(batch: torch.Tensor) -> torch.Tensor:
            sizes.append(batch.shape[0])
            if len(sizes) == 1:  # hold the first batch until the other requests wait in the queue
                first.set()
                release.wait(WAIT_S)
            return real(batch)

        swap_forward(batched, gated)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(masks_and_probabilities, batched)
            assert first.wait(WAIT_S)
            wait_until(lambda: runner.depth == len(DISTINCT) - sizes[0], "the other requests to queue")
            release.set()
            got = pending.result()
    assert max(sizes) > 1 and sum(sizes) == len(DISTINCT), sizes
    for (mask, prob), (want_mask, want_prob) in zip(got, expected, strict=True):
        assert np.array_equal(mask, want_mask)
        assert prob == pytest.approx(want_prob, abs=1e-6)  # batch vs single: ~1e-8 apart in fp32


def test_segment_full_queue_is_503_with_retry_after(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint, max_queue=1, model_lanes=1) as client:
        runner = client.app.state.service.runner
        entered, release = threading.Event(), threading.Event()
        real = runner._forward

        def slow(batch: torch.Tensor) -> torch.Tensor:
            entered.set()
            release.wait(WAIT_S)
            return real(batch)

        swap_forward(client, slow)
        with ThreadPoolExecutor(2) as pool:
            try:
                running = pool.submit(post, client, PHOTOS[0])  # on the model thread
                assert entered.wait(WAIT_S)
                queued = pool.submit(post, client, PHOTOS[1])  # fills the one queue slot
                wait_until(lambda: runner.depth == 1, "the second request to queue")
                refused = [post(client, PHOTOS[2]), post(client, PHOTOS[3])]
            finally:
                release.set()
            served = [running.result(), queued.result()]
    assert [r.status_code for r in refused] == [503, 503]
    for response in refused:
        assert response.headers["retry-after"] == "1"
        assert response.json()["detail"] == "the service is at capacity; retry shortly"
    assert [r.status_code for r in served] == [200, 200]


def test_segment_request_timeout_is_503(tiny_checkpoint: Path) -> None:
    with app_client(tiny_checkpoint, request_timeout_s=0.2) as client:
        release = threading.Event()
        def stuck(batch: torch.Tensor) -> torch.Tensor:
            release.wait(WAIT_S)
            return torch.zeros(batch.shape[0], 64, 64)

        real = swap_forward(client, stuck)
        try:
            response = post(client)
        finally:
            release.set()
        swap_forward(client, real)
        # the service answers again once the model does; a loaded CI machine may need more than 0.2 s for that
        client.app.state.service.settings.request_timeout_s = WAIT_S
        assert post(client).status_code == 200
    assert response.status_code == 503
    assert response.json()["detail"] == "the model did not answer within 0.2s; retry later"
    assert response.headers["retry-after"] == "5"


def test_uploads_over_a_megabyte_stay_in_memory(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette would spool a file part over 1 MB to disk, only for the service to read it straight back."""
    import tempfile

    import starlette.formparsers

    rolled_over: list[int] = []

    class RecordingSpool(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
        def rollover(self) -> None:
            rolled_over.append(self.tell())
            super().rollover()

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", RecordingSpool)
    noise = np.random.default_rng(0).integers(0, 256, (760, 760, 3), dtype=np.uint8)
    photo = png_bytes(noise)  # random pixels do not compress: ~1.7 MB
    assert len(photo) > 1024 * 1024
    response = api.post("/segment", files=image_files(photo, "big.png", "image/png"))
    assert response.status_code == 200, response.text
    assert response.json()["width"] == 760
    assert rolled_over == []
