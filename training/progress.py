"""Saving a training run part-way through an epoch, and going on from there.

An epoch of the teacher-labelled mix can take over an hour on a small CPU: a run stopped mid-epoch would lose it
all. With ``petseg-train --save-every MINUTES`` the run writes ``last.pt`` every so often during an epoch, with
where the epoch stands (:class:`EpochProgress`); resumed from it, the run skips the photos that epoch already
trained on, in the same order (:class:`ResumableSampler`), and ends the epoch with the loss and Dice of the whole
epoch, as if it had never stopped.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import asdict, dataclass, field
from typing import Any

from torch.utils.data.distributed import DistributedSampler

from training.metrics import SegmentationMetrics

__all__ = ["EpochProgress", "ProgressSaver", "ResumableSampler"]


@dataclass
class EpochProgress:
    """Where an epoch stands: the photos it has trained on and the running sums its result is made of."""

    epoch: int
    photos: int = 0  # the length of the epoch's order (this process's share): another length (or seed), another order
    samples: int = 0  # photos of this epoch's order already trained on
    seconds: float = 0.0  # training time spent on the epoch before this process took it up
    loss_sum: float = 0.0  # loss x images
    source_sums: dict[int, list[float]] = field(default_factory=dict)  # source -> [loss x images, images]
    metrics: SegmentationMetrics = field(default_factory=SegmentationMetrics)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only: a checkpoint stays loadable with ``torch.load(..., weights_only=True)``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EpochProgress:
        fields = dict(raw)
        fields["metrics"] = SegmentationMetrics(**fields.get("metrics", {}))
        return cls(**fields)


class ResumableSampler(DistributedSampler):
    """The training order: a shuffle that is a function of the seed and the epoch alone (DistributedSampler's, one
    share per process), which can start part-way through an epoch. Without torchrun it is the one share of one."""

    def __init__(self, dataset: Sized, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Draw ``epoch``'s order and leave out its first ``skip`` indices (already trained on)."""
        super().set_epoch(epoch)
        self.skip = min(max(0, skip), self.num_samples)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ProgressSaver:
    """After a training step: ``save(progress)`` once ``every_seconds`` have passed since the last save (or since
    the epoch began). ``every_seconds <= 0`` never saves."""

    def __init__(self, every_seconds: float, save: Callable[[EpochProgress], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_seconds = every_seconds
        self.save = save
        self.clock = clock
        self.last = clock()

    def restart(self) -> None:
        """An epoch begins (its end was just saved)."""
        self.last = self.clock()

    def __call__(self, progress: EpochProgress) -> None:
        if self.every_seconds > 0 and self.clock() - self.last >= self.every_seconds:
            self.save(progress)
            self.last = self.clock()
