"""A prediction ensemble: the mean of several engines' probability maps, behind the one-engine interface.

A diagnostic rather than a serving mode (it costs one forward pass per member): when models trained apart fail
on different photos, their mean mends the failures; when they fail on the same photos, the errors come from the
data, and no amount of averaging or retraining on it will fix them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from models.engine.segmenter import SegmenterBase

__all__ = ["EnsembleSegmenter"]


class EnsembleSegmenter(SegmenterBase):
    """Averages the members' ``forward`` outputs; the first member's checkpoint, input size and border convention
    stand for the ensemble, so every member must take the same input size and border convention."""

    def __init__(self, members: Sequence[SegmenterBase]) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two models")
        first = members[0]
        sizes = {member.image_size for member in members}
        if len(sizes) > 1:
            raise ValueError(f"the ensemble's models take different input sizes ({sorted(sizes)}): "
                             "their probability maps cannot be averaged pixel for pixel")
        conventions = {member.checkpoint.border_is_pet for member in members}
        if len(conventions) > 1:
            raise ValueError("the ensemble's models were trained with different border conventions "
                             "(border as pet and border as background)")
        self.members = list(members)
        self.checkpoint, self.device, self.image_size = first.checkpoint, first.device, first.image_size
        self.precision, self.runtime, self.info = first.precision, first.runtime, first.info
        self.min_blob_ratio, self.blob_threshold = first.min_blob_ratio, first.blob_threshold

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([member.forward(batch) for member in self.members]).mean(dim=0)

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> float:
        return sum(member.warmup(batch_sizes) for member in self.members)
