"""Cross-validation folds: every trainval image is validated exactly once, and the default is the lab's split."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from models.checkpoint import load_checkpoint
from training.data import list_split


def names(data: Path, split: str, folds: int = 10, fold: int = 0) -> list[str]:
    return [s.name for s in list_split(data, split, folds, fold)]


def test_folds_cover_trainval_exactly_once(pet_dataset: Path) -> None:
    everything = names(pet_dataset, "train") + names(pet_dataset, "valid")
    held_out = [n for fold in range(5) for n in names(pet_dataset, "valid", 5, fold)]
    assert sorted(held_out) == sorted(everything) and len(set(held_out)) == len(held_out)


def test_each_fold_trains_on_the_others(pet_dataset: Path) -> None:
    for fold in range(4):
        train, valid = set(names(pet_dataset, "train", 4, fold)), set(names(pet_dataset, "valid", 4, fold))
        assert train and valid and not train & valid


def test_default_fold_is_the_labs_index_mod_10_rule(pet_dataset: Path) -> None:
    lines = [ln.split()[0] for ln in (pet_dataset / "annotations" / "trainval.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert names(pet_dataset, "valid") == lines[::10]


@pytest.mark.parametrize(("folds", "fold"), [(5, 5), (5, -1), (1, 0)])
def test_impossible_folds_are_refused(pet_dataset: Path, folds: int, fold: int) -> None:
    with pytest.raises(ValueError, match="--fold"):
        list_split(pet_dataset, "valid", folds, fold)


# --- --fold none: the final model trains on every trainval image -------------------------------------------


def test_fold_none_trains_on_every_trainval_image_and_validates_on_none(pets30: Path) -> None:
    assert len(list_split(pets30, "train", 10, None)) == 30
    assert list_split(pets30, "valid", 10, None) == []


@pytest.mark.slow
def test_a_fold_none_run_trains_on_everything_and_keeps_the_last_epoch_as_best(
    pets30: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.training._runs import train

    out = tmp_path / "all"
    with caplog.at_level(logging.INFO, logger="training"):
        assert train(pets30, out, "-n", "unet", "-e", "2", "-lr", "3e-3", "--fold", "none", "--ema", "0.5") == 0
    assert "data: 8 train / 0 valid images" in caplog.text and "no validation split" in caplog.text
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best.epoch == last.epoch == 2 and last.config["fold"] is None
    history = last.training_state["history"]
    assert np.isnan(history["val_dice"]).all() and np.isfinite(history["train_loss"]).all()


def test_fold_must_be_a_number_or_none(capsys: pytest.CaptureFixture[str]) -> None:
    from training.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--fold", "all"])
    assert exit_info.value.code == 2 and "'none'" in capsys.readouterr().err
