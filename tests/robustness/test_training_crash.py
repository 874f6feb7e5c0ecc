"""A training run killed at any moment leaves a loadable checkpoint, and ``--model last`` finishes the job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from models.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TRAIN_ARGS = ["--image-size", "32", "--limit", "6", "-b", "3", "--workers", "0", "--device", "cpu", "-n", "unet"]

# Runs training with torch.save patched: the 2nd checkpoint write stops half-way (marker file, then sleep),
# so the parent can SIGKILL the process in the middle of writing.
HALF_WRITE = textwrap.dedent("""
    import sys, time, pathlib, torch
    marker = pathlib.Path(sys.argv[1])
    real_save = torch.save
    calls = {"n": 0}
    def slow_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 wrote last.pt and best.pt; this is epoch 2's last.pt
            f.write(b"half a checkpoint" * 1000)
            f.flush()
            marker.write_text("writing")
            time.sleep(600)
        return real_save(obj, f, *a, **k)
    torch.save = slow_save
    from training.train import main
    sys.exit(main(sys.argv[2:]))
""")


def _run_train(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "training.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.1)


def test_training_killed_mid_checkpoint_write_keeps_last_good_and_resumes(pet_dataset: Path, tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "writing"
    args = ["--data_path", str(pet_dataset), "-e", "3", "--out", str(out), *TRAIN_ARGS]
    proc = subprocess.Popen([sys.executable, "-c", HALF_WRITE, str(marker), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    survivor = load_checkpoint(out / "last.pt")  # the half-written file never replaced it
    assert survivor.epoch == 1
    resumed = _run_train(["--data_path", str(pet_dataset), "-e", "3", "--out", str(out), "--model", "last",
                          *TRAIN_ARGS])
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(out / "last.pt")
    assert final.epoch == 3
    assert final.training_state["history"]["epoch"] == [1.0, 2.0, 3.0]
    assert json.loads((out / "history.json").read_text())["epoch"] == [1.0, 2.0, 3.0]


def test_training_killed_during_an_epoch_resumes_to_the_same_final_epoch(pet_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--data_path", str(pet_dataset), "-e", "4", "--out", str(out), *TRAIN_ARGS]
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(out / "last.pt", proc)
    time.sleep(0.3)  # somewhere inside epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    killed_at = load_checkpoint(out / "last.pt").epoch
    assert 1 <= killed_at <= 4
    resumed = _run_train([*args, "--model", "last"])
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(out / "last.pt")
    assert final.epoch == 4
    assert final.training_state["history"]["epoch"] == [1.0, 2.0, 3.0, 4.0]
