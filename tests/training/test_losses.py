"""BCE + soft Dice: near zero when right and confident, large when wrong, Dice part within [0, 1]."""

from __future__ import annotations

import pytest
import torch

from training.losses import BCEDiceLoss, soft_dice_loss


@pytest.fixture
def target() -> torch.Tensor:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    return target


def test_bce_dice_loss_is_near_zero_for_confident_right_logits(target: torch.Tensor) -> None:
    assert BCEDiceLoss()((target * 2 - 1) * 12, target).item() < 0.01


def test_bce_dice_loss_is_large_for_confident_wrong_logits(target: torch.Tensor) -> None:
    assert BCEDiceLoss()((target * 2 - 1) * -12, target).item() > 5


def test_bce_dice_loss_weights_its_terms(target: torch.Tensor) -> None:
    logits = torch.zeros_like(target)  # p = 0.5 everywhere: BCE = ln 2
    bce_only = BCEDiceLoss(bce_weight=1.0, dice_weight=0.0)(logits, target).item()
    assert bce_only == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    both = BCEDiceLoss()(logits, target).item()
    assert both == pytest.approx(bce_only + soft_dice_loss(logits, target).item(), rel=1e-6)


def test_bce_dice_loss_accepts_bf16_logits(target: torch.Tensor) -> None:
    logits = ((target * 2 - 1) * 3).bfloat16().requires_grad_()
    loss = BCEDiceLoss()(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(logits.grad.float()).all()


def test_soft_dice_loss_is_between_zero_and_one_on_random_inputs() -> None:
    torch.manual_seed(0)
    value = soft_dice_loss(torch.randn(4, 1, 16, 16) * 5, (torch.rand(4, 1, 16, 16) > 0.5).float()).item()
    assert 0.0 <= value <= 1.0


def test_soft_dice_loss_reaches_its_bounds(target: torch.Tensor) -> None:
    assert soft_dice_loss((target * 2 - 1) * 30, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss((target * 2 - 1) * -30, target).item() > 0.9  # 1 - eps / (|T| + eps)


def test_soft_dice_loss_is_per_image_mean() -> None:
    target = torch.zeros(2, 1, 4, 4)
    target[0, :, :2] = 1
    logits = (target * 2 - 1) * 30
    logits[1] = 30  # the second image is empty but predicted full
    per_image = [soft_dice_loss(logits[i : i + 1], target[i : i + 1]).item() for i in range(2)]
    assert soft_dice_loss(logits, target).item() == pytest.approx(sum(per_image) / 2)
