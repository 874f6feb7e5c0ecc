"""Cross-validation folds: every trainval image is validated exactly once, and the default is the lab's split."""
from __future__ import annotations

from pathlib import Path

import pytest

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
