"""Training fixtures: a dataset whose 3 valid images do not divide by two ranks, and one reference run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import make_pet_dataset
from tests.training._runs import RECIPE


@pytest.fixture(scope="session")
def pets30(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 trainval images (27 train, 3 valid: lines 0, 10, 20) and 2 test images. Read-only by convention."""
    return make_pet_dataset(tmp_path_factory.mktemp("pets30") / "oxford-iiit-pet", n_trainval=30, n_test=2)


@pytest.fixture(scope="session")
def unet_run(pets30: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single-process 2-epoch UNet run of ``RECIPE``; its output folder. Read-only by convention."""
    from training.train import main

    out = tmp_path_factory.mktemp("unet_run") / "unet"
    assert main(["--data_path", str(pets30), "--out", str(out), *RECIPE]) == 0
    return out
