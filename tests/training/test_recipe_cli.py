"""The recipe flags: copy-paste augmentation, cross-validation folds and starting from another run's weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.training._runs import train
from training.data import list_split

slow = pytest.mark.slow


@slow
def test_train_with_copy_paste_runs_and_learns_something(pets30: Path, tmp_path: Path) -> None:
    out = tmp_path / "cp"
    assert train(pets30, out, "-n", "unet", "-e", "1", "--augment", "copy-paste") == 0
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint.config["augment"] == "copy-paste" and checkpoint.epoch == 1


def test_copy_paste_without_the_cache_is_exit_2(pets30: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert train(pets30, tmp_path / "x", "--augment", "copy-paste", "--no-cache") == 2
    assert "drop --no-cache" in capsys.readouterr().err


@slow
def test_train_on_a_fold_validates_on_that_fold(pets30: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "fold"
    with caplog.at_level("INFO"):
        assert main_fold(pets30, out) == 0
    assert "data: 22 train / 8 valid images" in caplog.text  # 30 trainval images, fold 1 of 4: 8 held out
    assert load_checkpoint(out / "last.pt").config["fold"] == 1


def main_fold(data: Path, out: Path) -> int:
    from training.train import main

    return main(["--data_path", str(data), "--out", str(out), "--image-size", "32", "-b", "8", "--workers", "0",
                 "--device", "cpu", "-n", "unet", "-e", "1", "--folds", "4", "--fold", "1"])


@pytest.mark.parametrize("flags", [["--folds", "4", "--fold", "4"], ["--folds", "1"]])
def test_impossible_fold_is_exit_2(pets30: Path, tmp_path: Path, flags: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train(pets30, tmp_path / "x", *flags)
    assert exc.value.code == 2 and "--fold" in capsys.readouterr().err


@slow
def test_init_weights_starts_a_new_run_from_the_given_weights(pets30: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert train(pets30, first, "-n", "unet", "-e", "1") == 0
    second = tmp_path / "second"
    # A learning rate so small that one step leaves the weights where they started.
    assert train(pets30, second, "-n", "unet", "-e", "1", "-lr", "1e-12", "--seed", "9",
                 "--init-weights", str(first / "last.pt")) == 0
    source, started = load_checkpoint(first / "last.pt"), load_checkpoint(second / "last.pt")
    assert started.epoch == 1 and started.training_state["history"]["epoch"] == [1.0]
    for key, value in source.model_state.items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(started.model_state[key], value, atol=1e-6, rtol=0)


def test_init_weights_and_resume_together_is_exit_2(pets30: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train(pets30, tmp_path / "x", "--init-weights", "a.pt", "--model", "last")
    assert exc.value.code == 2 and "--init-weights" in capsys.readouterr().err


def test_init_weights_of_another_architecture_is_exit_2(pets30: Path, tmp_path: Path, tiny_checkpoint: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert train(pets30, tmp_path / "x", "-n", "unet", "--init-weights", str(tiny_checkpoint)) == 2
    assert "resnet34_unet" in capsys.readouterr().err


# --- petseg-cv: every image scored once, by the fold model that never saw it ---------------------------------


@pytest.fixture(scope="module")
def cv_run(pets30: Path, module_tmp_path: Path) -> Path:
    from training.cv import main

    out = module_tmp_path / "cv" / "run"
    assert main(["--data_path", str(pets30), "--out", str(out), "--folds", "3", "-n", "unet", "-e", "1",
                 "--image-size", "32", "-b", "8", "--workers", "0", "--device", "cpu", "--worst", "4"]) == 0
    return out


@slow
def test_cv_scores_every_trainval_image_once(cv_run: Path, pets30: Path) -> None:
    import json

    from training.data import list_split

    report = json.loads((cv_run / "cv_report.json").read_text())
    trainval = {s.name for split in ("train", "valid") for s in list_split(pets30, split)}
    assert set(report["per_image"]) == trainval and report["images"] == len(trainval)
    assert {report["fold_of"][name] for name in trainval} == {0, 1, 2}
    assert "dice" in report["border_ignored"] and report["per_breed"] and len(report["worst"]) == 4


@slow
def test_cv_trains_one_model_per_fold_and_draws_the_worst(cv_run: Path) -> None:
    for fold in range(3):
        assert load_checkpoint(cv_run / f"fold{fold}" / "last.pt").config["fold"] == fold
    assert (cv_run / "cv_worst.png").stat().st_size > 1000


@slow
def test_cv_rerun_resumes_finished_folds_without_training_again(cv_run: Path, pets30: Path) -> None:
    from training.cv import main

    before = (cv_run / "fold0" / "last.pt").stat().st_mtime_ns
    assert main(["--data_path", str(pets30), "--out", str(cv_run), "--folds", "3", "-n", "unet", "-e", "1",
                 "--image-size", "32", "-b", "8", "--workers", "0", "--device", "cpu", "--worst", "4"]) == 0
    assert (cv_run / "fold0" / "last.pt").stat().st_mtime_ns == before


@slow
def test_cv_scores_each_fold_at_its_last_epoch_not_the_epoch_picked_on_that_fold(cv_run: Path, pets30: Path) -> None:
    """best.pt was chosen by its Dice on the held-out fold; scoring it there would flatter the recipe."""
    import json
    import os

    from models.checkpoint import save_checkpoint
    from training.cv import main

    before = json.loads((cv_run / "cv_report.json").read_text())
    fold0 = [name for name, fold in before["fold_of"].items() if fold == 0]
    blind = load_checkpoint(cv_run / "fold0" / "last.pt")
    blind.model_state["head.bias"] = torch.full_like(blind.model_state["head.bias"], -100.0)  # sees no pet anywhere
    best = cv_run / "fold0" / "best.pt"
    os.replace(best, best.with_suffix(".kept"))
    try:
        save_checkpoint(blind, best)
        assert main(["--data_path", str(pets30), "--out", str(cv_run), "--folds", "3", "-n", "unet", "-e", "1",
                     "--image-size", "32", "-b", "8", "--workers", "0", "--device", "cpu", "--worst", "4"]) == 0
    finally:
        os.replace(best.with_suffix(".kept"), best)
    after = json.loads((cv_run / "cv_report.json").read_text())
    assert [after["per_image"][name] for name in fold0] == pytest.approx([before["per_image"][name] for name in fold0])
    assert max(after["per_image"][name] for name in fold0) > 0


def test_cv_refuses_weights_that_would_leak(pets30: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cv import main

    with pytest.raises(SystemExit) as exc:
        main(["--data_path", str(pets30), "--init-weights", "x.pt"])
    assert exc.value.code == 2 and "leak" in capsys.readouterr().err


def test_holding_out_a_breed_makes_it_the_whole_valid_split_and_keeps_it_out_of_train(pets30: Path) -> None:
    valid = list_split(pets30, "valid", holdout_breed="beagle")
    train_names = {s.name for s in list_split(pets30, "train", holdout_breed="beagle")}
    everything = {s.name for split in ("train", "valid") for s in list_split(pets30, split)}
    assert valid and all(s.name.startswith("beagle_") for s in valid)
    assert train_names and not any(n.startswith("beagle_") for n in train_names)
    assert {s.name for s in valid} | train_names == everything
    assert list_split(pets30, "test", holdout_breed="beagle") == list_split(pets30, "test")


def test_an_unknown_breed_to_hold_out_is_exit_2_listing_the_breeds(pets30: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert train(pets30, tmp_path / "x", "--holdout-breed", "pug") == 2
    assert "no breed 'pug'" in (err := capsys.readouterr().err) and "Abyssinian, beagle" in err


@pytest.mark.slow
def test_leave_one_breed_out_scores_every_photo_with_a_model_that_never_saw_its_breed(
        pets30: Path, module_tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.cv import main
    from training.data import PetDataset

    built: list[tuple[str, set[str]]] = []  # (split, breeds) of every dataset a fold trains or validates on
    original = PetDataset.__init__

    def spy(self: PetDataset, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        built.append((self.split, {s.name.rsplit("_", 1)[0] for s in self.samples}))

    monkeypatch.setattr(PetDataset, "__init__", spy)
    out = module_tmp_path / "lobo"
    assert main(["--data_path", str(pets30), "--out", str(out), "--by-breed", "-n", "unet", "-e", "1",
                 "--image-size", "32", "-b", "8", "--workers", "0", "--limit", "8"]) == 0
    report = json.loads((out / "cv_report.json").read_text())
    assert report["by_breed"] is True and report["folds"] == 2 and report["limit"] == 8
    everything = {s.name for split in ("train", "valid") for s in list_split(pets30, split)}
    assert set(report["fold_of"]) == everything
    assert all(report["fold_of"][name] == name.rsplit("_", 1)[0] for name in everything)
    for breed in ("Abyssinian", "beagle"):
        assert load_checkpoint(out / f"breed-{breed}" / "last.pt").config["holdout_breed"] == breed
    assert (out / "cv_worst.png").is_file()
    assert built == [("train", {"beagle"}), ("valid", {"Abyssinian"}), ("train", {"Abyssinian"}),
                     ("valid", {"beagle"})]


def test_cv_refuses_a_single_fold_instead_of_ignoring_it(pets30: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cv import main

    with pytest.raises(SystemExit) as exc:
        main(["--data_path", str(pets30), "--fold", "1"])
    assert exc.value.code == 2 and "every fold itself" in capsys.readouterr().err
