"""The real thing: ``python -m app`` and ``uvicorn app.main:app`` as subprocesses, over real HTTP."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.factories import blob_image, jpeg_bytes, make_checkpoint
from tests.server import REPO, free_port, wait_until_ready

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETSEG_")}
    return {**env, "PETSEG_DEVICE": "cpu", **extra}


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env=environment(**env))


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    port = free_port()
    with open(log, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=REPO, env=environment(PETSEG_CHECKPOINT=str(tiny_checkpoint)),
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, url, READY_TIMEOUT_S, log.read_text)
        yield Server(process, url, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@dataclass
class Stopped:
    returncode: int | None
    stderr: str


@pytest.fixture(scope="module")
def stopped(server: Server) -> Stopped:
    """SIGTERM the server (after the tests that use it) and wait for it to exit."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    return Stopped(server.process.poll(), server.log.read_text())


def test_server_ready_reports_ready(server: Server) -> None:
    response = httpx.get(f"{server.url}/ready", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"ready": True, "detail": "model loaded and warm"}


def test_server_segment_returns_png_for_accept_png(server: Server) -> None:
    photo = jpeg_bytes(blob_image(80, 60, seed=2)[0])
    response = httpx.post(f"{server.url}/segment", files={"image": ("pet.jpg", photo, "image/jpeg")},
                          headers={"Accept": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    mask = Image.open(io.BytesIO(response.content))
    assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (80, 60))
    assert 0.0 <= float(response.headers["x-foreground-fraction"]) <= 1.0
    assert response.headers["x-image-size"] == "80x60"


def test_server_segment_error_is_json_over_http(server: Server) -> None:
    files = {"image": ("pet.jpg", b"", "image/jpeg")}
    response = httpx.post(f"{server.url}/segment", files=files, timeout=60)
    assert response.status_code == 400
    assert response.json() == {"detail": "image is empty"}


def test_server_sigterm_shuts_down_gracefully_within_30s(stopped: Stopped) -> None:
    assert stopped.returncode is not None, f"still running {STOP_TIMEOUT_S:g}s after SIGTERM"
    assert "Application shutdown complete" in stopped.stderr
    assert "Traceback" not in stopped.stderr


def test_server_sigterm_exit_code_is_0(stopped: Stopped) -> None:
    assert stopped.returncode == 0


# --- start-up failures --------------------------------------------------------------------------------------

def test_serve_missing_checkpoint_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pt"
    result = run(["-m", "app", "--port", str(free_port())], PETSEG_CHECKPOINT=str(missing))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(missing) in lines[0] and "checkpoint not found" in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_invalid_setting_exits_2_naming_it() -> None:
    result = run(["-m", "app", "--port", str(free_port())], PETSEG_THRESHOLD="2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "petseg-serve: invalid settings: PETSEG_THRESHOLD='2': Input should be less than or equal to 1"]


def test_serve_untrained_checkpoint_fails_naming_why(tmp_path: Path) -> None:
    untrained = make_checkpoint(tmp_path / "epoch0.pt", image_size=64, epoch=0)
    result = run(["-m", "app", "--port", str(free_port())], PETSEG_CHECKPOINT=str(untrained))
    assert result.returncode != 0
    assert f"{untrained} holds untrained weights" in result.stderr
    assert "Traceback" not in result.stderr


def test_uvicorn_missing_checkpoint_fails_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pt"
    result = run(["-m", "uvicorn", "app.main:app", "--port", str(free_port())],
                 PETSEG_CHECKPOINT=str(missing))
    assert result.returncode != 0
    assert "petseg cannot start" in result.stderr
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_uvicorn_checkpoint_failing_warmup_fails_without_traceback(tmp_path: Path) -> None:
    broken = make_checkpoint(tmp_path / "size0.pt", image_size=0)
    result = run(["-m", "uvicorn", "app.main:app", "--port", str(free_port())], PETSEG_CHECKPOINT=str(broken))
    assert result.returncode != 0
    assert "petseg cannot start" in result.stderr
    assert "Traceback" not in result.stderr
