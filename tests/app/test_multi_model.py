"""Several models in one service (PETSEG_CHECKPOINTS): choosing per request, /models, names in answers and
metrics, unknown names, start-up errors, and batches that never mix two models' images."""
from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.__main__ import main as serve_main
from app.batching import BatchRunner
from app.config import DEFAULT_CHECKPOINT, Settings, SettingsError, load_settings
from app.service import SegmentationService
from models.checkpoint import CheckpointError
from tests.app.helpers import app_client, image_files, make_settings, open_png
from tests.factories import blob_image, jpeg_bytes, make_checkpoint

PHOTO = jpeg_bytes(blob_image(80, 60, seed=2)[0])


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another architecture at another input size: a request routed to the wrong model would show it."""
    return make_checkpoint(tmp_path_factory.mktemp("unet") / "unet.pt", arch="unet", image_size=48, seed=7)


@pytest.fixture(scope="module")
def two(tiny_checkpoint: Path, second_checkpoint: Path) -> Iterator[TestClient]:
    models = {"pets": tiny_checkpoint, "small": second_checkpoint}
    with app_client(DEFAULT_CHECKPOINT, checkpoints=models) as client:
        yield client


def segment(client: TestClient, **form: str) -> dict:
    response = client.post("/segment", files=image_files(PHOTO), data=form)
    assert response.status_code == 200, response.text
    return response.json()


# --- settings -----------------------------------------------------------------------------------------------

def test_checkpoints_come_from_a_json_object_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSEG_CHECKPOINTS", json.dumps({"zeta": "z.pt", "alpha": "a.pt"}))
    monkeypatch.delenv("PETSEG_CHECKPOINT", raising=False)
    settings = load_settings(_env_file=None)
    assert list(settings.model_checkpoints()) == ["zeta", "alpha"]  # the first is the default, not sorted
    assert settings.model_checkpoints()["alpha"] == Path("a.pt")


def test_single_checkpoint_is_the_model_named_default(tiny_checkpoint: Path) -> None:
    settings = Settings(checkpoint=tiny_checkpoint, _env_file=None)
    assert settings.model_checkpoints() == {"default": tiny_checkpoint}


@pytest.mark.parametrize(("value", "message"), [
    ("{}", "at least one name"),
    ('{"bad name": "x.pt"}', "model names must be"),
    ('{"-dash": "x.pt"}', "model names must be"),
    ('["x.pt"]', "PETSEG_CHECKPOINTS"),
    ("not json", "PETSEG_CHECKPOINTS"),
])
def test_bad_checkpoints_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str,
                                                    message: str) -> None:
    monkeypatch.setenv("PETSEG_CHECKPOINTS", value)
    monkeypatch.delenv("PETSEG_CHECKPOINT", raising=False)
    with pytest.raises(SettingsError, match=message) as error:
        load_settings(_env_file=None)
    assert "PETSEG_CHECKPOINTS" in str(error.value)


def test_checkpoint_and_checkpoints_together_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSEG_CHECKPOINTS", '{"a": "a.pt"}')
    monkeypatch.setenv("PETSEG_CHECKPOINT", "b.pt")
    with pytest.raises(SettingsError, match="not both"):
        load_settings(_env_file=None)


# --- start-up -----------------------------------------------------------------------------------------------

def test_missing_named_checkpoint_fails_loading_and_names_the_model(tiny_checkpoint: Path,
                                                                     tmp_path: Path) -> None:
    models = {"ok": tiny_checkpoint, "gone": tmp_path / "gone.pt"}
    settings = make_settings(DEFAULT_CHECKPOINT, checkpoints=models)
    with pytest.raises(CheckpointError, match=r"model 'gone': checkpoint not found: .*gone\.pt"):
        SegmentationService.load(settings)


def test_serve_refuses_a_missing_named_checkpoint_with_one_line(tiny_checkpoint: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PETSEG_CHECKPOINTS", json.dumps({"ok": str(tiny_checkpoint),
                                                         "gone": str(tmp_path / "gone.pt")}))
    monkeypatch.delenv("PETSEG_CHECKPOINT", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the working directory
    assert serve_main(["--port", "1"]) == 2  # refused before uvicorn starts
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model 'gone' in PETSEG_CHECKPOINTS: checkpoint not found" in lines[0]


# --- requests -----------------------------------------------------------------------------------------------

def test_models_lists_every_model_default_first(two: TestClient, tiny_checkpoint: Path,
                                                second_checkpoint: Path) -> None:
    body = two.get("/models").json()
    assert body["default"] == "pets"
    assert [m["name"] for m in body["models"]] == ["pets", "small"]
    assert [m["default"] for m in body["models"]] == [True, False]
    assert [m["arch"] for m in body["models"]] == ["resnet34_unet", "unet"]
    assert [m["input_size"] for m in body["models"]] == [64, 48]
    for model in body["models"]:
        # fp32 weights: 4 bytes per parameter, plus buffers (folded BatchNorm leaves few)
        assert 4 * model["parameters"] <= model["weights_bytes"] <= 4 * model["parameters"] * 1.01 + 4096
        assert model["dtype"] == "fp32" and model["device"] == "cpu" and len(model["checkpoint_sha256"]) == 64


def test_request_without_model_uses_the_default_and_names_it(two: TestClient) -> None:
    body = segment(two)
    assert body["model"]["name"] == "pets" and body["model"]["arch"] == "resnet34_unet"


def test_each_named_model_answers_as_it_would_alone(two: TestClient, tiny_checkpoint: Path,
                                                    second_checkpoint: Path) -> None:
    chosen = {name: segment(two, model=name) for name in ("pets", "small")}
    assert chosen["small"]["model"] == {"name": "small", "arch": "unet",
                                        "checkpoint_sha256": chosen["small"]["model"]["checkpoint_sha256"]}
    for name, checkpoint in (("pets", tiny_checkpoint), ("small", second_checkpoint)):
        with app_client(checkpoint) as alone:
            expected = segment(alone)
        assert chosen[name]["foreground_probability"] == pytest.approx(expected["foreground_probability"],
                                                                      abs=1e-6)
        assert chosen[name]["mask_png"] == expected["mask_png"]
        assert chosen[name]["model"]["checkpoint_sha256"] == expected["model"]["checkpoint_sha256"]
    assert chosen["pets"]["foreground_probability"] != chosen["small"]["foreground_probability"]


def test_png_answer_names_the_model_in_a_header(two: TestClient) -> None:
    response = two.post("/segment", files=image_files(PHOTO), data={"model": "small"},
                        headers={"Accept": "image/png"})
    assert response.status_code == 200
    assert response.headers["x-model-name"] == "small" and response.headers["x-model"] == "unet"
    assert open_png(response.content).size == (80, 60)


def test_unknown_model_is_422_listing_the_known_ones(two: TestClient) -> None:
    response = two.post("/segment", files=image_files(PHOTO), data={"model": "nope"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "unknown model 'nope'" in detail and "pets, small" in detail


def test_single_model_service_is_named_default(client: TestClient) -> None:
    assert segment(client)["model"]["name"] == "default"
    assert client.get("/model").json()["name"] == "default"
    assert segment(client, model="default")["model"]["name"] == "default"
    response = client.post("/segment", files=image_files(PHOTO), data={"model": "other"})
    assert response.status_code == 422 and "this service has: default" in response.json()["detail"]


def test_metrics_are_labelled_with_the_model_name(two: TestClient) -> None:
    def batches(text: str, model: str) -> float:
        prefix = f'petseg_inference_seconds_count{{model="{model}"}} '
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = two.get("/metrics").text
    segment(two, model="small")
    after = two.get("/metrics").text
    assert batches(after, "small") == batches(before, "small") + 1
    assert batches(after, "pets") == batches(before, "pets")
    info = [line for line in after.splitlines() if line.startswith("petseg_model_info{")]
    assert any('arch="unet"' in line and 'model="small"' in line for line in info), info
    assert 'petseg_batch_size_count{model="small"}' in after


# --- batches ------------------------------------------------------------------------------------------------

def test_a_batch_never_mixes_models() -> None:
    """Interleaved jobs for two models, batched up to 4: each forward sees only its own model's images."""
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def forward_for(name: str, value: float):  # noqa: ANN202
        def forward(batch: torch.Tensor) -> torch.Tensor:
            assert torch.all(batch[:, 0, 0, 0] == int(value * 100)), f"{name} got another model's image"
            seen[name].append(batch.shape[0])
            return torch.full((batch.shape[0], 4, 4), value)
        return forward

    runner = BatchRunner(forward_for("a", 0.25), max_batch=4, batch_wait_ms=50)
    runner.add_model("b", forward_for("b", 0.75))

    async def run() -> list[np.ndarray]:
        jobs = []
        for index in range(12):
            model = None if index % 2 == 0 else "b"
            marker = 25 if model is None else 75
            jobs.append(runner.submit(torch.full((3, 4, 4), marker, dtype=torch.uint8), 30, model))
        return await asyncio.gather(*jobs)

    try:
        results = asyncio.run(run())
    finally:
        runner.close()
    assert [float(r[0, 0]) for r in results] == [0.25, 0.75] * 6
    assert sum(seen["a"]) == 6 and sum(seen["b"]) == 6
    assert max(seen["a"] + seen["b"]) <= 4


def test_submit_to_an_unregistered_model_is_a_programming_error() -> None:
    runner = BatchRunner(lambda batch: torch.zeros(batch.shape[0], 4, 4))
    try:
        with pytest.raises(KeyError, match="no model 'x'"):
            asyncio.run(runner.submit(torch.zeros(3, 4, 4, dtype=torch.uint8), 5, "x"))
    finally:
        runner.close()


def test_mask_answer_is_at_the_photo_size_for_each_model(two: TestClient) -> None:
    for name in ("pets", "small"):
        mask = open_png(base64.b64decode(segment(two, model=name)["mask_png"]))
        assert mask.size == (80, 60), name
