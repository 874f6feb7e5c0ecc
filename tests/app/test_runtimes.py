"""The service on the exported runtimes: PETSEG_RUNTIME / PETSEG_PRECISION choose it, /model says which, masks
agree with the PyTorch engine's, and an impossible pair stops start-up with one line."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import SettingsError, load_settings
from models.engine.selection import installed_runtimes
from tests.factories import blob_image, jpeg_bytes
from tests.server import REPO, free_port

PHOTO = jpeg_bytes(blob_image(90, 70, seed=3)[0])


def _mask(client: TestClient) -> np.ndarray:
    response = client.post("/segment", files={"image": ("p.jpg", PHOTO, "image/jpeg")}, headers={"Accept": "image/png"})
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.mark.usefixtures("export_cache")
@pytest.mark.skipif("onnxruntime" not in installed_runtimes(), reason="onnxruntime is not installed")
def test_service_on_onnxruntime_reports_it_and_answers_like_torch(settings, client: TestClient) -> None:
    from app.main import create_app

    torch_info = client.get("/model").json()
    assert (torch_info["runtime"], torch_info["precision"]) == ("torch", torch_info["dtype"])
    torch_mask = _mask(client)
    ort_settings = settings.model_copy(update={"runtime": "onnxruntime", "precision": "fp32"})
    with TestClient(create_app(ort_settings)) as ort_client:
        info = ort_client.get("/model").json()
        assert (info["runtime"], info["precision"], info["device"]) == ("onnxruntime", "fp32", "cpu")
        assert info["parameters"] == torch_info["parameters"]
        assert ort_client.get("/models").json()["models"][0]["runtime"] == "onnxruntime"
        ort_mask = _mask(ort_client)
    assert ort_mask.shape == torch_mask.shape == (70, 90)
    assert np.mean(ort_mask != torch_mask) <= 0.005  # pixels right at the threshold may flip


def test_runtime_and_precision_settings_are_validated_by_name() -> None:
    with pytest.raises(SettingsError, match="PETSEG_RUNTIME='tensorrt'"):
        load_settings(runtime="tensorrt", _env_file=None)
    with pytest.raises(SettingsError, match="PETSEG_PRECISION='int4'"):
        load_settings(precision="int4", _env_file=None)
    assert load_settings(runtime="openvino", precision="int8", _env_file=None).precision == "int8"


def test_serve_int8_on_torch_exits_2_with_one_line(tiny_checkpoint: Path) -> None:
    env = {**os.environ, "PETSEG_CHECKPOINT": str(tiny_checkpoint), "PETSEG_RUNTIME": "torch",
           "PETSEG_PRECISION": "int8"}
    result = subprocess.run([sys.executable, "-m", "app", "--port", str(free_port())], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "int8 runs on the onnxruntime or openvino runtime" in result.stderr
    assert "Traceback" not in result.stderr
