"""One epoch of training and one pass of evaluation. The loop order matters and is commented."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from models.engine.runtime import autocast
from training.ema import WeightAverage
from training.images import MASK_IGNORE
from training.losses import loss_by_source
from training.metrics import SegmentationMetrics
from training.progress import EpochProgress

__all__ = ["EpochResult", "StepContext", "evaluate_epoch", "train_one_epoch"]


@dataclass
class StepContext:
    """Everything a step needs besides the batch: device, precision, layout, loss, optimisation."""

    device: torch.device
    precision: str
    channels_last: bool
    criterion: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    clip_grad_norm: float = 0.0
    progress: bool = True
    weight_average: WeightAverage | None = None
    source_weights: dict[int, float] = field(default_factory=dict)  # loss weight per sample ``source`` tag
    after_step: Callable[[EpochProgress], None] | None = None  # e.g. a mid-epoch save (training.progress)

    def to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        images = batch["image"].to(self.device, non_blocking=non_blocking)
        masks = batch["mask"].to(self.device, non_blocking=non_blocking)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks


@dataclass
class EpochResult:
    loss: float
    metrics: SegmentationMetrics
    source_losses: dict[int, float] = field(default_factory=dict)  # per ``source`` tag, mean per image


def train_one_epoch(model: nn.Module, loader: Iterable[dict[str, Any]], ctx: StepContext, desc: str = "train",
                    reduce: Callable[[EpochResult], EpochResult] | None = None,
                    progress: EpochProgress | None = None) -> EpochResult:
    """Forward, backward, clip, step, per batch; loss averaged per image over the epoch. ``progress``: the sums of
    an epoch resumed part-way (the loader then holds only the photos it had still to train on)."""
    assert ctx.optimizer is not None, "training needs an optimizer"
    model.train()
    progress = progress or EpochProgress(epoch=0)
    steps_done = progress.samples // max(1, getattr(loader, "batch_size", None) or 1)
    bar = tqdm(loader, desc=desc, unit="batch", disable=not ctx.progress, leave=False, initial=steps_done,
               total=steps_done + len(loader) if hasattr(loader, "__len__") else None)
    for batch in bar:
        images, masks = ctx.to_device(batch)
        with autocast(ctx.device, ctx.precision):
            logits = model(images)
        if "source" in batch:  # a labelled + teacher-labelled mix: each source's loss apart, weighed
            loss, parts = loss_by_source(ctx.criterion, logits, masks, batch["source"].to(masks.device),
                                         ctx.source_weights)
            for source, (part, count) in parts.items():
                sums = progress.source_sums.setdefault(source, [0.0, 0])
                sums[0] += part * count
                sums[1] += count
        else:
            loss = ctx.criterion(logits, masks)  # the loss casts to fp32 itself
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            ctx.scaler.unscale_(ctx.optimizer)  # clip true gradients, not scaled ones
        else:
            loss.backward()
        if ctx.clip_grad_norm > 0:  # after backward, before step (the report clipped stale gradients)
            torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad_norm)
        if ctx.scaler is not None:
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            ctx.optimizer.step()
        if ctx.scheduler is not None:
            ctx.scheduler.step()  # per-step schedule
        if ctx.weight_average is not None:
            ctx.weight_average.update(getattr(model, "module", model))  # the network inside DDP
        batch_size = images.shape[0]
        progress.loss_sum += float(loss.detach()) * batch_size
        progress.samples += batch_size
        progress.metrics.update(logits.detach() > 0, masks == 1, list(batch["name"]), ignore=masks == MASK_IGNORE)
        bar.set_postfix(loss=f"{progress.loss_sum / progress.samples:.4f}")
        if ctx.after_step is not None:
            ctx.after_step(progress)
    result = EpochResult(progress.loss_sum / max(progress.samples, 1), progress.metrics,
                         {s: total / count for s, (total, count) in progress.source_sums.items() if count})
    return reduce(result) if reduce else result


@torch.inference_mode()
def evaluate_epoch(model: nn.Module, loader: Iterable[dict[str, Any]], ctx: StepContext, desc: str = "valid",
                   reduce: Callable[[EpochResult], EpochResult] | None = None) -> EpochResult:
    """Loss and Dice/IoU over a whole split at the training resolution."""
    model.eval()
    metrics = SegmentationMetrics()
    loss_sum, seen = 0.0, 0
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not ctx.progress, leave=False):
        images, masks = ctx.to_device(batch)
        with autocast(ctx.device, ctx.precision):
            logits = model(images)
        loss = ctx.criterion(logits, masks)
        loss_sum += float(loss) * images.shape[0]
        seen += images.shape[0]
        metrics.update(logits > 0, masks == 1, list(batch["name"]), ignore=masks == MASK_IGNORE)
    result = EpochResult(loss_sum / max(seen, 1), metrics)
    return reduce(result) if reduce else result
