"""torchrun with two CPU processes (gloo): the same outcome as one process, files written by rank 0 only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from models.checkpoint import load_checkpoint
from tests.training._runs import RECIPE
from training import fit
from training.config import TrainConfig
from training.data import PetDataset, list_split
from training.distributed import DistInfo
from training.loop import StepContext, evaluate_epoch
from training.losses import BCEDiceLoss
from training.transforms import build_transform

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ddp(
    pets30: Path, module_tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = module_tmp_path / "ddp" / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training.train",
        "--data_path",
        str(pets30),
        "--out",
        str(out),
        *RECIPE,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    return result, out


def history(run: Path) -> dict[str, list[float]]:
    return json.loads((run / "history.json").read_text())


@pytest.mark.slow
def test_torchrun_two_processes_exit_0(ddp: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = ddp
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_writes_one_best_and_one_last_checkpoint(
    ddp: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = ddp
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "curves.png", "history.json", "last.pt"]


@pytest.mark.slow
def test_torchrun_logs_every_epoch_once(ddp: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = ddp
    assert result.stderr.count("epoch 1/2 ") == 1 and result.stderr.count("epoch 2/2 ") == 1  # rank 0 only


@pytest.mark.slow
def test_torchrun_only_rank_0_logs_progress_and_lines_say_their_rank(
    ddp: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = ddp
    assert "INFO [rank 0] " in result.stderr
    assert "INFO [rank 1] " not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_history_has_the_single_process_epochs(
    ddp: tuple[subprocess.CompletedProcess[str], Path], unet_run: Path
) -> None:
    _, out = ddp
    assert history(out)["epoch"] == history(unet_run)["epoch"] == [1.0, 2.0]


@pytest.mark.slow
def test_torchrun_metrics_are_finite(ddp: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = ddp
    run = history(out)
    assert all(
        math.isfinite(v)
        for key in ("train_loss", "train_dice", "val_loss", "val_dice", "val_iou")
        for v in run[key]
    )
    assert all(0.0 <= v <= 1.0 for v in run["val_dice"])


@pytest.mark.slow
def test_torchrun_checkpoint_holds_the_bare_model(ddp: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = ddp
    last = load_checkpoint(out / "last.pt", expected_arch="unet")
    assert last.epoch == 2 and last.config["learning_rate"] == 3e-3
    assert not any(key.startswith("module.") for key in last.model_state)  # not the DDP wrapper's names
    last.build_model()


def rescore_validation(run: Path, data: Path) -> tuple[float, float]:
    """The valid loss and Dice of ``run``'s last.pt, recomputed in this process over the whole valid split."""
    model = load_checkpoint(run / "last.pt").build_model().to(memory_format=torch.channels_last)
    dataset = PetDataset(data, "valid", build_transform("none", 32), image_size=32, progress=False)
    ctx = StepContext(torch.device("cpu"), "fp32", True, BCEDiceLoss(), progress=False)
    result = evaluate_epoch(model, DataLoader(dataset, batch_size=8), ctx)
    return result.loss, result.metrics.summary()["dice"]


@pytest.mark.slow
def test_single_process_validation_scores_are_those_of_the_saved_model(unet_run: Path, pets30: Path) -> None:
    # The control for the torchrun test below: the rescoring itself reproduces what training reported.
    run = history(unet_run)
    assert rescore_validation(unet_run, pets30) == pytest.approx(
        (run["val_loss"][-1], run["val_dice"][-1]), rel=1e-4
    )


@pytest.mark.slow
def test_torchrun_validation_scores_are_those_of_the_saved_model(
    ddp: tuple[subprocess.CompletedProcess[str], Path], pets30: Path
) -> None:
    _, out = ddp
    run = history(out)
    assert rescore_validation(out, pets30) == pytest.approx(
        (run["val_loss"][-1], run["val_dice"][-1]), rel=1e-4
    )


def test_distributed_validation_shards_cover_each_image_once(pets30: Path) -> None:
    config = TrainConfig(
        data_path=str(pets30), image_size=32, batch_size=8, workers=0, limit=8, augment="none"
    )
    seen: list[str] = []
    for rank in range(2):
        _, valid_loader, _ = fit._make_loaders(config, torch.device("cpu"), DistInfo(rank, 2, rank), False)
        seen += [name for batch in valid_loader for name in batch["name"]]
    assert sorted(seen) == sorted(s.name for s in list_split(pets30, "valid"))
