"""The training command line on a tiny synthetic dataset: it learns, writes, resumes and fails clearly."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from tests.training._runs import FAST, train
from training.config import TrainConfig
from training.fit import HISTORY_KEYS
from training.train import build_parser, config_from_args, main

slow = pytest.mark.slow  # trains (or shares a fixture that trains): several seconds on a 2-core CPU


def history(run: Path) -> dict[str, list[float]]:
    return json.loads((run / "history.json").read_text())


def adam_steps(checkpoint: Path) -> list[float]:
    state = load_checkpoint(checkpoint).training_state["optimizer"]["state"]
    return sorted({float(s["step"]) for s in state.values()})


# --- one straight 2-epoch run (the shared ``unet_run``) -----------------------------------------------------


@slow
def test_train_lowers_the_training_loss(unet_run: Path) -> None:
    losses = history(unet_run)["train_loss"]
    assert min(losses[1:]) < losses[0]


@slow
def test_train_history_has_one_entry_per_epoch_for_every_key(unet_run: Path) -> None:
    run = history(unet_run)
    assert run["epoch"] == [1.0, 2.0]
    assert set(HISTORY_KEYS) <= set(run) and all(len(run[key]) == 2 for key in HISTORY_KEYS)


@slow
def test_train_writes_best_last_history_and_curves(unet_run: Path) -> None:
    assert sorted(p.name for p in unet_run.iterdir()) == ["best.pt", "curves.png", "history.json", "last.pt"]


@slow
def test_train_curves_are_a_valid_png(unet_run: Path) -> None:
    with Image.open(unet_run / "curves.png") as image:
        image.verify()
        assert image.format == "PNG"


@slow
def test_train_checkpoint_loads_with_weights_only(unet_run: Path) -> None:
    raw = torch.load(unet_run / "last.pt", map_location="cpu", weights_only=True)
    assert raw["format"] == "petseg-checkpoint/1"


@slow
def test_train_checkpoint_holds_what_resuming_and_serving_need(unet_run: Path) -> None:
    last = load_checkpoint(unet_run / "last.pt", expected_arch="unet")
    assert (last.arch, last.image_size, last.epoch) == ("unet", 32, 2)
    assert {"train_loss", "train_dice", "val_loss", "val_dice", "val_iou"} <= set(last.metrics)
    assert last.metrics["val_dice"] == history(unet_run)["val_dice"][-1]
    assert (last.config["learning_rate"], last.config["seed"], last.config["limit"]) == (3e-3, 1, 8)
    state = last.training_state
    assert state is not None and state["optimizer"]["state"] and state["history"]["epoch"] == [1.0, 2.0]


@slow
def test_train_best_checkpoint_is_the_best_valid_epoch(unet_run: Path) -> None:
    dice = history(unet_run)["val_dice"]
    best = load_checkpoint(unet_run / "best.pt")
    assert best.metrics["val_dice"] == max(dice)
    assert best.epoch == 1 + dice.index(max(dice))


@slow
def test_train_checkpoint_builds_a_model_that_predicts(unet_run: Path) -> None:
    model = load_checkpoint(unet_run / "best.pt").build_model().eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


# --- resume: 1 epoch, then ``--model last -e 2`` ------------------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch(pets30: Path, module_tmp_path: Path) -> Path:
    out = module_tmp_path / "one" / "run"
    assert train(pets30, out, "-e", "1") == 0
    return out


@pytest.fixture(scope="module")
def resumed(one_epoch: Path, pets30: Path, module_tmp_path: Path) -> Path:
    out = module_tmp_path / "resumed" / "run"
    out.mkdir(parents=True)
    shutil.copy2(one_epoch / "last.pt", out / "last.pt")
    assert train(pets30, out, "-e", "2", "--model", "last") == 0
    return out


@slow
def test_train_best_checkpoint_survives_last_being_overwritten_in_place(pets30: Path, tmp_path: Path) -> None:
    """best.pt is its own file, not a second name for last.pt: ``cp x.pt last.pt`` or ``torch.save(..., "last.pt")``
    write into the existing file, and must not change the best epoch's weights."""
    out = tmp_path / "run"
    assert train(pets30, out, "-e", "1") == 0
    with open(out / "last.pt", "r+b") as handle:  # in place, as cp and torch.save(path) do
        handle.truncate(0)
        handle.write(b"not a checkpoint")
    assert load_checkpoint(out / "best.pt").epoch == 1


@slow
def test_train_one_epoch_takes_one_optimizer_step_per_batch(one_epoch: Path) -> None:
    assert adam_steps(one_epoch / "last.pt") == [1.0]  # 8 images, one batch of 8


@slow
def test_train_resume_continues_at_the_next_epoch_only(resumed: Path, one_epoch: Path) -> None:
    assert load_checkpoint(resumed / "last.pt").epoch == 2
    run = history(resumed)
    assert run["epoch"] == [1.0, 2.0]
    assert run["train_loss"][0] == history(one_epoch)["train_loss"][0]  # epoch 1 carried over, not re-run


@slow
def test_train_resume_restores_the_optimizer(resumed: Path, one_epoch: Path) -> None:
    assert adam_steps(resumed / "last.pt") == [2 * adam_steps(one_epoch / "last.pt")[0]]


@slow
def test_train_resume_past_the_target_does_nothing(one_epoch: Path, pets30: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in one_epoch.iterdir()}
    assert train(pets30, one_epoch, "-e", "1", "--model", "last") == 0
    assert {p.name: p.stat().st_mtime_ns for p in one_epoch.iterdir()} == before
    assert load_checkpoint(one_epoch / "last.pt").epoch == 1


@slow
def test_train_resume_into_another_arch_is_exit_2(
    one_epoch: Path, pets30: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train(pets30, tmp_path / "x", "-n", "resnet34_unet", "--model", str(one_epoch / "last.pt"))
    assert code == 2
    err = capsys.readouterr().err
    assert "holds a 'unet' model, not 'resnet34_unet'" in err and "last.pt" in err
    assert not (tmp_path / "x").exists()


def test_train_resume_from_a_missing_checkpoint_is_exit_2(
    pets30: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(pets30, tmp_path / "x", "--model", "last") == 2
    assert "checkpoint not found" in capsys.readouterr().err


# --- flags and data errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--epochs", "0"],
        ["--net", "foo"],
        ["--amp", "xyz"],
        ["-lr", "-1"],
        ["--image-size", "0"],
        ["-b", "x"],
        ["--augment", "heavy"],
        ["--underexpose", "1.5"],
        ["--underexpose", "-0.1"],
    ],
    ids=["epochs-0", "net-foo", "amp-xyz", "negative-lr", "image-size-0", "batch-x", "augment-heavy",
         "underexpose-1.5", "underexpose-negative"],
)
def test_train_bad_flags_exit_2(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_underexpose_reaches_the_runs_config_and_a_bad_share_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_from_args(build_parser().parse_args(["--underexpose", "0.2"])).underexpose == 0.2
    assert config_from_args(build_parser().parse_args([])).underexpose == 0.0
    with pytest.raises(SystemExit):
        main(["--underexpose", "2"])
    assert "--underexpose: expected a number between 0 and 1, not '2'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--underexpose must be in \[0, 1\], not 1.5"):
        TrainConfig(underexpose=1.5).check()


def test_train_unknown_net_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--net", "foo"])
    assert "resnet34_unet, unet" in capsys.readouterr().err


def test_train_missing_data_is_exit_2_naming_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data_path", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "-e", "1"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "nowhere" in err


# --- bf16 and bad files -------------------------------------------------------------------------------------


@slow
def test_train_with_bf16_autocast_on_the_cpu(
    pets30: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="training")
    assert train(pets30, tmp_path / "bf16", "-e", "1", "--amp", "bf16", "-n", "resnet34_unet") == 0
    assert any("(bf16," in record.getMessage() for record in caplog.records)  # autocast really was bf16
    last = load_checkpoint(tmp_path / "bf16" / "last.pt")
    assert last.arch == "resnet34_unet" and last.config["amp"] == "bf16"
    assert all(v.dtype != torch.bfloat16 for v in last.model_state.values())  # weights stay fp32
    assert torch.isfinite(torch.tensor([last.metrics["train_loss"], last.metrics["val_loss"]])).all()


@pytest.fixture(scope="module")
def corrupt_copy(pets30: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the dataset with one train image (trainval line 4) replaced by a broken JPEG."""
    root = tmp_path_factory.mktemp("corrupt") / "pets"
    shutil.copytree(pets30, root)
    name = (root / "annotations" / "trainval.txt").read_text().splitlines()[4].split()[0]
    (root / "images" / f"{name}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root, name


def test_train_bad_file_is_exit_2_naming_it(
    corrupt_copy: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, name = corrupt_copy
    assert train(root, tmp_path / "r", "-e", "1") == 2
    err = capsys.readouterr().err
    assert f"{name}.jpg" in err and "--skip-bad" in err


@slow
def test_train_skip_bad_reports_and_continues(
    corrupt_copy: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, name = corrupt_copy
    assert train(root, tmp_path / "r", "-e", "1", "--skip-bad") == 0
    messages = [record.getMessage() for record in caplog.records]
    assert any("skipped 1 of 27" in m for m in messages)
    assert any(f"{name}.jpg" in m for m in messages)
    assert (tmp_path / "r" / "last.pt").is_file()


@slow
def test_a_new_run_does_not_replace_another_runs_checkpoints_without_overwrite(
        one_epoch: Path, pets30: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in one_epoch.iterdir()}
    assert train(pets30, one_epoch, "-e", "1", "-n", "unet") == 2
    assert "holds another run (last.pt, best.pt)" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in one_epoch.iterdir()} == before


@slow
def test_resuming_without_out_goes_on_in_the_runs_own_folder(
        one_epoch: Path, pets30: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.train import main

    run = tmp_path / "copy"
    run.mkdir()
    shutil.copy2(one_epoch / "last.pt", run / "last.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["--data_path", str(pets30), *FAST, "-e", "2", "--model", str(run / "last.pt")]) == 0
    assert load_checkpoint(run / "last.pt").epoch == 2 and (run / "history.json").is_file()  # best.pt only if better
    assert not (tmp_path / "runs").exists()


def test_an_out_that_cannot_be_written_is_refused_before_any_image_is_read(
        pets30: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    assert train(pets30, in_the_way, "-e", "1") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert train(pets30, in_the_way / "run", "-e", "1") == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err


@slow
def test_train_resume_goes_on_from_the_checkpoints_weights_not_fresh_ones(
        one_epoch: Path, pets30: Path, tmp_path: Path) -> None:
    """Every weight of the checkpoint is shifted by 0.25 before resuming: one more optimizer step (lr 1e-3 by
    default, Adam moves a weight by about lr a step) must keep that shift; freshly initialised weights would not
    have it."""
    from models.checkpoint import save_checkpoint

    checkpoint = load_checkpoint(one_epoch / "last.pt")
    shifted = {k: (v + 0.25 if v.is_floating_point() and "running" not in k else v)
               for k, v in checkpoint.model_state.items()}
    checkpoint.model_state = shifted
    run = tmp_path / "shifted"
    save_checkpoint(checkpoint, run / "last.pt")
    assert train(pets30, run, "-e", "2", "--model", "last") == 0
    resumed = load_checkpoint(run / "last.pt").model_state
    weights = [k for k, v in shifted.items() if v.is_floating_point() and "running" not in k]
    largest_move = max(float((resumed[k] - shifted[k]).abs().max()) for k in weights)
    assert largest_move < 0.05, largest_move
