"""BCE-with-logits + soft Dice: BCE gives dense per-pixel gradients, Dice counters the foreground imbalance."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BCEDiceLoss", "soft_dice_loss"]


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 - soft Dice, computed per image (B, 1, H, W) and averaged over the batch."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    intersection = (prob * target).sum(1)
    total = prob.sum(1) + target.sum(1)
    return (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


class BCEDiceLoss(nn.Module):
    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return self.bce_weight * bce + self.dice_weight * soft_dice_loss(logits, target)
