"""An exponential moving average of the weights (Polyak averaging), kept beside the model being trained.

With a few hundred training photos, validation Dice swings by a point from one epoch to the next; the average of
the last few hundred steps is smoother and usually a little better, and it removes the need to pick an epoch on a
small validation split. torch's ``AveragedModel`` does the bookkeeping; BatchNorm statistics are averaged too
(``use_buffers``), so the average can be evaluated and saved as it is.

A fixed decay of 0.999 keeps 0.999^n of the first, random weights after n steps: 30% after a 40-epoch run of
240 photos, enough to spoil a short run's average. With the warm-up (on by default) the decay after n steps is
min(decay, (1 + n) / (10 + n)), as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: the average
covers about the last tenth of the steps so far until that reaches the decay's own memory (about 1 / (1 - decay)
steps).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["WeightAverage"]

WARMUP_OFFSET = 10  # decay after n steps: min(decay, (1 + n) / (WARMUP_OFFSET + n))


class WeightAverage:
    """The running average of ``model``'s parameters and buffers with ``decay`` per optimiser step (after the
    warm-up, when ``warmup``)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self._averaged = AveragedModel(model, multi_avg_fn=self._fold_in, use_buffers=True)

    def decay_at(self, updates: int) -> float:
        """The decay of the update made when ``updates`` steps are already in the average."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + updates) / (WARMUP_OFFSET + updates))

    @property
    def module(self) -> nn.Module:
        """The averaged network, to evaluate and to save."""
        return self._averaged.module

    @property
    def updates(self) -> int:
        return int(self._averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights in; the first call copies them."""
        self._averaged.update_parameters(model)

    def restore(self, averaged_state: dict[str, Any], updates: int, warmup: bool) -> None:
        """Resume: the averaged weights saved in a checkpoint, how many steps they average, and whether the run
        began with the warm-up (a run goes on as it began)."""
        self.module.load_state_dict(averaged_state)
        self._averaged.n_averaged.fill_(updates)
        self.warmup = warmup

    @torch.no_grad()
    def _fold_in(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _: torch.Tensor) -> None:
        """``AveragedModel``'s multi_avg_fn: one lerp over all tensors of a device and dtype (as torch's own EMA).

        The count is read from the CPU buffer, not from the copy ``AveragedModel`` passes on the model's device,
        which would cost a GPU sync every step."""
        decay = self.decay_at(self.updates)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        else:  # integer buffers (BatchNorm's num_batches_tracked), as torch's get_ema_multi_avg_fn does
            for mean, value in zip(averaged, current, strict=True):
                mean.copy_(mean * decay + value * (1.0 - decay))
