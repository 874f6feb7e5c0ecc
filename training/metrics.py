"""Dice and IoU over a whole split: mean of per-image scores and the micro (pixel-pooled) score.

Never a mean of per-batch means: a batch of 2 and a batch of 8 would weigh images differently.
An image where prediction and ground truth are both empty scores 1 (nothing to find, nothing found).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SegmentationMetrics", "breed_of", "dice_score", "iou_score"]


def breed_of(name: str) -> str:
    """Oxford-IIIT Pet names are ``Breed_Name_123``: the breed is everything before the last underscore."""
    return name.rsplit("_", 1)[0] if "_" in name else name


def _counts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image intersection, |pred| and |target| for boolean (B, ...) masks."""
    pred = pred.flatten(1).bool()
    target = target.flatten(1).bool()
    return (pred & target).sum(1).double(), pred.sum(1).double(), target.sum(1).double()


def dice_score(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image Dice of boolean masks (B, ...) -> (B,); both empty -> 1."""
    inter, p, t = _counts(pred, target)
    total = p + t
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def iou_score(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image IoU of boolean masks (B, ...) -> (B,); both empty -> 1."""
    inter, p, t = _counts(pred, target)
    union = p + t - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass
class SegmentationMetrics:
    """Accumulates per-image scores and pooled pixel counts across batches."""

    names: list[str] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    intersection: float = 0.0
    pred_pixels: float = 0.0
    target_pixels: float = 0.0

    def update(self, pred: Tensor, target: Tensor, names: list[str] | None = None,
               ignore: Tensor | None = None) -> None:
        """Add a batch of boolean masks; pixels where ``ignore`` is true (e.g. the trimap's border band) count
        for neither prediction nor ground truth."""
        pred = pred.detach().cpu()
        target = target.detach().cpu()
        if ignore is not None:
            keep = ~ignore.detach().cpu().bool()
            pred, target = pred.bool() & keep, target.bool() & keep
        inter, p, t = _counts(pred, target)
        self.dice += dice_score(pred, target).tolist()
        self.iou += iou_score(pred, target).tolist()
        self.names += names if names is not None else [str(len(self.names) + i) for i in range(len(inter))]
        self.intersection += float(inter.sum())
        self.pred_pixels += float(p.sum())
        self.target_pixels += float(t.sum())

    @property
    def count(self) -> int:
        return len(self.dice)

    def summary(self) -> dict[str, float]:
        """``dice``/``iou``: mean of per-image scores; ``dice_micro``/``iou_micro``: pooled over all pixels."""
        if not self.dice:
            return {"dice": float("nan"), "iou": float("nan"), "dice_micro": float("nan"),
                    "iou_micro": float("nan"), "images": 0}
        total = self.pred_pixels + self.target_pixels
        union = total - self.intersection
        return {
            "dice": sum(self.dice) / len(self.dice),
            "iou": sum(self.iou) / len(self.iou),
            "dice_micro": 2 * self.intersection / total if total else 1.0,
            "iou_micro": self.intersection / union if union else 1.0,
            "images": len(self.dice),
        }

    def share_below(self, threshold: float) -> float:
        """Share of images whose Dice is under ``threshold`` (the failures a user notices)."""
        return sum(d < threshold for d in self.dice) / len(self.dice) if self.dice else float("nan")

    def by_group(self, group_of: Callable[[str], str]) -> dict[str, dict[str, float]]:
        """Mean Dice, share under 0.7 and image count per group of names (e.g. per breed)."""
        groups: dict[str, list[float]] = {}
        for name, dice in zip(self.names, self.dice, strict=True):
            groups.setdefault(group_of(name), []).append(dice)
        return {g: {"dice": sum(v) / len(v), "below_0.7": sum(d < 0.7 for d in v) / len(v), "images": len(v)}
                for g, v in sorted(groups.items())}

    def worst(self, k: int = 10) -> list[dict[str, float | str]]:
        """The ``k`` images with the lowest Dice, worst first."""
        order = sorted(range(len(self.dice)), key=lambda i: self.dice[i])[:k]
        return [{"name": self.names[i], "dice": self.dice[i], "iou": self.iou[i]} for i in order]
