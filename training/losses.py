"""BCE-with-logits + soft Dice: BCE gives dense per-pixel gradients, Dice counters the foreground imbalance.

Target pixels equal to ``MASK_IGNORE`` (the trimap's border band with ``--border ignore``) count for neither term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.images import MASK_IGNORE

__all__ = ["BCEDiceLoss", "soft_dice_loss", "split_target"]


def split_target(target: Tensor) -> tuple[Tensor, Tensor]:
    """(0/1 target, 0/1 weight): ignored pixels get target 0 and weight 0."""
    target = target.float()
    weight = (target != MASK_IGNORE).float()
    return target * weight, weight


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 - soft Dice, computed per image (B, 1, H, W) over its scored pixels and averaged over the batch."""
    return _soft_dice_loss(logits, *split_target(target), eps=eps)


def _soft_dice_loss(logits: Tensor, target: Tensor, weight: Tensor, eps: float = 1.0) -> Tensor:
    prob = (torch.sigmoid(logits.float()) * weight).flatten(1)
    target = target.flatten(1)
    intersection = (prob * target).sum(1)
    total = prob.sum(1) + target.sum(1)
    return (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


class BCEDiceLoss(nn.Module):
    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target01, weight = split_target(target)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target01, weight=weight, reduction="sum")
        bce = bce / weight.sum().clamp(min=1.0)  # the mean over scored pixels (all of them without an ignore band)
        return self.bce_weight * bce + self.dice_weight * _soft_dice_loss(logits, target01, weight)


def loss_by_source(criterion: nn.Module, logits: Tensor, target: Tensor, sources: Tensor,
                   weights: dict[int, float]) -> tuple[Tensor, dict[int, tuple[float, int]]]:
    """The batch's loss with each source's images weighed by ``weights[source]`` (1 when absent), and each
    source's own loss and image count, for the log.

    Each source's loss is ``criterion`` on its images alone; the total is their mean weighted by weight x count,
    so with every weight 1 an image counts the same whatever its source."""
    total, norm = logits.new_zeros((), dtype=torch.float32), 0.0
    parts: dict[int, tuple[float, int]] = {}
    for source in torch.unique(sources).tolist():
        chosen = (sources == source).nonzero(as_tuple=True)[0]
        part = criterion(logits[chosen], target[chosen])
        count = int(chosen.numel())
        weight = float(weights.get(int(source), 1.0))
        total = total + part * (weight * count)
        norm += weight * count
        parts[int(source)] = (float(part.detach()), count)
    return total / max(norm, 1e-12), parts
