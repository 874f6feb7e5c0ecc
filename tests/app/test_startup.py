"""Start-up failures are one clear line, never a traceback wall; a real server answers over HTTP."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.factories import blob_image, jpeg_bytes
from tests.server import REPO, free_port, running_server


def start(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_serve_with_a_missing_checkpoint_exits_2_with_one_line(tmp_path: Path) -> None:
    result = start(["-m", "app", "--port", str(free_port())], PETSEG_CHECKPOINT=str(tmp_path / "gone.pt"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"petseg-serve: checkpoint not found: {tmp_path / 'gone.pt'} "
                                                  "(set PETSEG_CHECKPOINT)"]


def test_serve_on_a_busy_port_says_so_before_loading_the_model(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The checkpoint is missing too: the port is checked first, before any model is read.
        result = start(["-m", "app", "--port", str(port)], PETSEG_CHECKPOINT=str(tmp_path / "gone.pt"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"petseg-serve: cannot bind 127.0.0.1:{port}: ") and "--port" in line


def test_serve_with_an_invalid_setting_names_the_variable() -> None:
    result = start(["-m", "app", "--port", str(free_port())], PETSEG_DEVICE="gpu")
    assert result.returncode == 2
    assert "PETSEG_DEVICE='gpu'" in result.stderr and "Traceback" not in result.stderr


def test_uvicorn_with_a_missing_checkpoint_says_why_without_a_traceback(tmp_path: Path) -> None:
    result = start(["-m", "uvicorn", "app.main:app", "--port", str(free_port())],
                   PETSEG_CHECKPOINT=str(tmp_path / "gone.pt"))
    assert result.returncode != 0
    assert "petseg cannot start: checkpoint not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_real_server_process_serves_png_masks(tiny_checkpoint: Path) -> None:
    with running_server(tiny_checkpoint) as url:
        response = httpx.post(f"{url}/segment", files={"image": ("p.jpg", jpeg_bytes(blob_image(64, 48)[0]))},
                              headers={"Accept": "image/png"}, timeout=60)
        assert response.status_code == 200 and response.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert float(response.headers["x-foreground-fraction"]) >= 0.0
        assert httpx.get(f"{url}/model", timeout=10).json()["arch"] == "resnet34_unet"
