"""An exponential moving average of the weights (Polyak averaging), kept beside the model being trained.

With a few hundred training photos, validation Dice swings by a point from one epoch to the next; the average of
the last few hundred steps is smoother and usually a little better, and it removes the need to pick an epoch on a
small validation split. torch's ``AveragedModel`` does the bookkeeping; BatchNorm statistics are averaged too
(``use_buffers``), so the average can be evaluated and saved as it is.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The running average of ``model``'s parameters and buffers with ``decay`` per optimiser step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

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

    def restore(self, averaged_state: dict[str, Any], updates: int) -> None:
        """Resume: the averaged weights saved in a checkpoint and how many steps they average."""
        self.module.load_state_dict(averaged_state)
        self._averaged.n_averaged.fill_(updates)
