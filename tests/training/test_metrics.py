"""Dice and IoU against hand-computed values; split-level aggregation is per image, never per batch."""
from __future__ import annotations

import pytest
import torch

from training.losses import BCEDiceLoss, soft_dice_loss
from training.metrics import SegmentationMetrics, dice_score, iou_score


def masks(pred_on: list[int], target_on: list[int], n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.zeros(1, n, dtype=torch.bool)
    target = torch.zeros(1, n, dtype=torch.bool)
    pred[0, pred_on] = True
    target[0, target_on] = True
    return pred, target


@pytest.mark.parametrize(("pred_on", "target_on", "dice", "iou"), [
    ([1, 2, 3], [1, 2, 3], 1.0, 1.0),  # perfect
    ([0, 1], [5, 6, 7], 0.0, 0.0),  # disjoint
    ([0, 1, 2, 3], [1, 2, 3, 4, 5, 6], 6 / 10, 3 / 7),  # partial: overlap 3, |P| 4, |T| 6
    ([], [], 1.0, 1.0),  # both empty: nothing to find, nothing found
    ([2], [], 0.0, 0.0),  # false positive on an empty image
])
def test_dice_and_iou_hand_computed(pred_on: list[int], target_on: list[int], dice: float, iou: float) -> None:
    pred, target = masks(pred_on, target_on)
    assert dice_score(pred, target).item() == pytest.approx(dice)
    assert iou_score(pred, target).item() == pytest.approx(iou)


def test_split_metrics_average_images_not_batches() -> None:
    metrics = SegmentationMetrics()
    perfect, _ = masks([1, 2], [1, 2])
    metrics.update(torch.cat([perfect, perfect, perfect]), torch.cat([perfect, perfect, perfect]))  # 3 images, Dice 1
    wrong_p, wrong_t = masks([0], [9])
    metrics.update(wrong_p, wrong_t)  # 1 image, Dice 0
    summary = metrics.summary()
    assert summary["dice"] == pytest.approx(3 / 4)  # the mean of per-batch means would say 0.5
    assert summary["images"] == 4


def test_split_metrics_micro_pools_pixels() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks([0, 1, 2, 3], [1, 2, 3, 4, 5, 6]))  # inter 3, |P| 4, |T| 6
    metrics.update(*masks([7], [7]))  # inter 1, |P| 1, |T| 1
    summary = metrics.summary()
    assert summary["dice_micro"] == pytest.approx(2 * 4 / (5 + 7))
    assert summary["iou_micro"] == pytest.approx(4 / (5 + 7 - 4))


def test_split_metrics_worst_lists_lowest_dice_first() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*masks([1], [1]), names=["good"])
    metrics.update(*masks([1], [2]), names=["bad"])
    metrics.update(*masks([1, 2], [2]), names=["half"])
    assert [row["name"] for row in metrics.worst(2)] == ["bad", "half"]


def test_loss_is_small_for_confident_right_logits_and_large_for_wrong() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    right = (target * 2 - 1) * 12
    loss = BCEDiceLoss()
    assert loss(right, target).item() < 0.01
    assert loss(-right, target).item() > 5


def test_soft_dice_loss_is_between_zero_and_one() -> None:
    torch.manual_seed(0)
    value = soft_dice_loss(torch.randn(4, 1, 16, 16), (torch.rand(4, 1, 16, 16) > 0.5).float()).item()
    assert 0.0 <= value <= 1.0
