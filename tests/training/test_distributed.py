"""torchrun with two CPU processes (gloo): same shape of outcome as one process."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ARGS = ["--image-size", "32", "--limit", "8", "-b", "2", "--workers", "0", "--device", "cpu", "-e", "2", "-n", "unet"]


def run(command: list[str], out: Path, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, "--data_path", str(data), "--out", str(out), *ARGS], cwd=REPO,
                          capture_output=True, text=True, timeout=400, env={"OMP_NUM_THREADS": "1",
                                                                            "PATH": "/usr/bin:/bin"})


def test_torchrun_two_processes_matches_a_single_process_run(pet_dataset: Path, tmp_path: Path) -> None:
    single = run([sys.executable, "-m", "training.train"], tmp_path / "single", pet_dataset)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training.train"], tmp_path / "ddp", pet_dataset)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.pt")) == ["best.pt", "last.pt"]
    ddp_history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    single_history = json.loads((tmp_path / "single" / "history.json").read_text())
    assert ddp_history["epoch"] == single_history["epoch"] == [1.0, 2.0]
    assert all(math.isfinite(v) for key in ("train_loss", "val_loss", "val_dice") for v in ddp_history[key])
    last = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert last.epoch == 2 and not any(k.startswith("module.") for k in last.model_state)
    assert ddp.stderr.count("epoch 2/2") == 1  # rank 0 alone logs and writes
