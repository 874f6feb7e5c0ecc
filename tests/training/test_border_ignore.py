"""``--border ignore``: the trimap's border band is left out of the loss and the training metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.training._runs import train
from training.data import PetDataset
from training.images import MASK_IGNORE, trimap_to_mask
from training.losses import BCEDiceLoss, soft_dice_loss
from training.train import main
from training.transforms import build_transform

TRIMAP = np.array([[1, 2, 3]], dtype=np.uint8)


def test_the_border_becomes_the_ignore_value_whatever_it_would_count_as() -> None:
    for border_is_pet in (True, False):
        assert trimap_to_mask(TRIMAP, border_is_pet, ignore_border=True).tolist() == [[1, 0, MASK_IGNORE]]


def band_target() -> torch.Tensor:
    """Two images: a 4x4 pet ringed by a one-pixel ignore band."""
    target = torch.zeros(2, 1, 10, 10)
    target[:, :, 2:8, 2:8] = MASK_IGNORE
    target[:, :, 3:7, 3:7] = 1
    return target


def test_the_loss_does_not_see_what_the_model_says_on_the_band() -> None:
    target = band_target()
    band = target == MASK_IGNORE
    logits = torch.randn(target.shape)
    other = logits.clone()
    other[band] = torch.randn(int(band.sum())) * 20
    loss = BCEDiceLoss()
    assert loss(logits, target).item() == pytest.approx(loss(other, target).item(), rel=1e-6)
    logits.requires_grad_()
    loss(logits, target).backward()
    assert torch.all(logits.grad[band] == 0) and torch.any(logits.grad[~band] != 0)


def test_the_loss_with_a_band_equals_the_loss_over_the_scored_pixels_only() -> None:
    target = band_target()
    keep = target[0, 0] != MASK_IGNORE
    logits = torch.randn(target.shape)
    scored_logits = logits[:, :, keep].reshape(2, 1, 1, -1)
    scored_target = target[:, :, keep].reshape(2, 1, 1, -1)
    assert BCEDiceLoss()(logits, target).item() == pytest.approx(BCEDiceLoss()(scored_logits, scored_target).item(),
                                                                   rel=1e-5)
    assert soft_dice_loss(logits, target).item() == pytest.approx(soft_dice_loss(scored_logits, scored_target).item(),
                                                                  rel=1e-5)


def test_the_band_survives_strong_augmentation_as_the_ignore_value(pets30: Path) -> None:
    data = PetDataset(pets30, "train", build_transform("strong", 32), image_size=32, ignore_border=True,
                      progress=False)
    values: set[float] = set()
    for index in range(len(data)):
        values |= set(torch.unique(data[index]["mask"]).tolist())
    assert values == {0.0, 1.0, float(MASK_IGNORE)}


def test_ignore_with_copy_paste_is_refused_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--border", "ignore", "--augment", "copy-paste"])
    assert exit_info.value.code == 2
    assert "two-valued masks" in capsys.readouterr().err


@pytest.mark.slow
def test_a_border_ignored_run_trains_and_its_checkpoint_scores_the_border_as_pet(pets30: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(pets30, out, "-n", "unet", "-e", "2", "-lr", "3e-3", "--border", "ignore", "--augment", "strong") == 0
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint.config["ignore_border"] is True
    assert checkpoint.border_is_pet  # evaluate and the service score it as the report does
    history = checkpoint.training_state["history"]
    assert all(np.isfinite(history["train_loss"])) and 0.0 <= history["val_dice"][-1] <= 1.0
