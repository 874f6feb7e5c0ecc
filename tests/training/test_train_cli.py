"""The training command line on a tiny synthetic dataset: it learns, writes, resumes and fails clearly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from training.train import main

FAST = ["--image-size", "32", "--limit", "8", "-b", "4", "--workers", "0", "--device", "cpu", "--seed", "1"]


def train(pet_dataset: Path, out: Path, *extra: str) -> int:
    return main(["--data_path", str(pet_dataset), "--out", str(out), *FAST, *extra])


@pytest.fixture(scope="module")
def three_epochs(pet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "unet"
    assert train(pet_dataset, out, "-n", "UNet", "-e", "3", "-lr", "3e-3") == 0
    return out


def test_train_lowers_the_loss(three_epochs: Path) -> None:
    history = json.loads((three_epochs / "history.json").read_text())
    assert history["epoch"] == [1.0, 2.0, 3.0]
    assert min(history["train_loss"][1:]) < history["train_loss"][0]


def test_train_writes_best_last_history_and_curves(three_epochs: Path) -> None:
    for name in ("best.pt", "last.pt", "history.json", "curves.png"):
        assert (three_epochs / name).is_file(), name
    assert Image.open(three_epochs / "curves.png").format == "PNG"


def test_train_checkpoint_holds_what_resuming_needs(three_epochs: Path) -> None:
    last = load_checkpoint(three_epochs / "last.pt")
    assert (last.arch, last.image_size, last.epoch) == ("unet", 32, 3)
    assert {"val_dice", "val_iou", "train_loss", "val_loss"} <= set(last.metrics)
    assert last.config["learning_rate"] == 3e-3
    assert last.training_state is not None and last.training_state["optimizer"]["state"]
    best = load_checkpoint(three_epochs / "best.pt")
    assert best.metrics["val_dice"] == max(json.loads((three_epochs / "history.json").read_text())["val_dice"])


def _adam_steps(path: Path) -> float:
    state = load_checkpoint(path).training_state["optimizer"]["state"]
    return float(next(iter(state.values()))["step"])


def test_train_resume_continues_at_the_next_epoch_with_the_optimizer(pet_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(pet_dataset, out, "-e", "1") == 0
    steps_after_one = _adam_steps(out / "last.pt")
    assert train(pet_dataset, out, "-e", "2", "--model", str(out / "last.pt")) == 0
    last = load_checkpoint(out / "last.pt")
    assert last.epoch == 2
    assert last.training_state["history"]["epoch"] == [1.0, 2.0]
    assert _adam_steps(out / "last.pt") == 2 * steps_after_one


def test_train_resume_past_the_target_does_nothing(pet_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(pet_dataset, out, "-e", "1") == 0
    before = (out / "last.pt").stat().st_mtime_ns
    assert train(pet_dataset, out, "-e", "1", "--model", "last") == 0
    assert (out / "last.pt").stat().st_mtime_ns == before


def test_train_resume_into_another_arch_is_exit_2(three_epochs: Path, pet_dataset: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = train(pet_dataset, tmp_path / "x", "-n", "resnet34_unet", "--model", str(three_epochs / "last.pt"))
    assert code == 2
    assert "holds a 'unet' model, not 'resnet34_unet'" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--net", "segformer"], ["--amp", "fp8"], ["-b", "x"]])
def test_train_bad_flags_exit_2(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2


def test_train_missing_data_is_exit_2_naming_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data_path", str(tmp_path / "nowhere"), "-e", "1"]) == 2
    err = capsys.readouterr().err
    assert "data folder not found" in err and "nowhere" in err


def test_train_with_bf16_autocast_on_the_cpu(pet_dataset: Path, tmp_path: Path) -> None:
    assert train(pet_dataset, tmp_path / "bf16", "-e", "1", "--amp", "bf16", "-n", "resnet34_unet") == 0
    assert torch.isfinite(torch.tensor(load_checkpoint(tmp_path / "bf16" / "last.pt").metrics["train_loss"]))


def test_train_skip_bad_reports_and_continues(pet_dataset: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    root = tmp_path / "pets"
    shutil.copytree(pet_dataset, root)
    name = (root / "annotations/trainval.txt").read_text().splitlines()[4].split()[0]
    (root / "images" / f"{name}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert main(["--data_path", str(root), "--out", str(tmp_path / "r"), *FAST, "-e", "1"]) == 2
    assert train(root, tmp_path / "r", "-e", "1", "--skip-bad") == 0
    assert any("skipped 1 of" in record.getMessage() for record in caplog.records)
