"""Training speed: the report's plain loop against the project's training step, images/s."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.results import Budget, Samples, Timing
from bench.timing import time_calls, to_timing
from models import build_model
from models.engine.runtime import resolve_precision
from training.loop import StepContext, train_one_epoch
from training.losses import BCEDiceLoss


def _random_batch(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = (torch.rand(batch, 1, size, size, generator=generator) > 0.6).float()
    return images, masks


def _report_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    inter = (probs * target).sum()
    return 1 - (2 * inter + eps) / (probs.sum() + target.sum() + eps)


def bench_train_plain(arch: str, size: int, device: torch.device, budget: Budget) -> Timing:
    """The report's step: fp32 NCHW, sigmoid then ``nn.BCELoss`` + Dice, Adam (clip order is not speed)."""
    torch.manual_seed(0)
    model = build_model(arch).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    bce = nn.BCELoss()
    images, masks = (t.to(device) for t in _random_batch(budget.train_batch, size))

    def step() -> float:
        optimizer.zero_grad()
        probs = torch.sigmoid(model(images))
        loss = bce(probs, masks) + _report_dice_loss(probs, masks)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    samples = time_calls(step, device, warmup=1, iters=budget.train_iters, max_s=budget.train_max_s)
    return to_timing(samples, budget.train_batch, "fp32")


class TimedLoader:
    """An in-memory loader repeating one batch that stamps the time each step asks for the next batch, so
    ``train_one_epoch``'s own per-step work (loss, clipping, metrics) is inside the measurement."""

    warmup = 1

    def __init__(self, batch: dict[str, Any], budget: Budget) -> None:
        self.batch, self.budget = batch, budget
        self.stamps: list[tuple[float, float]] = []  # (wall, process CPU) when each step asked for a batch

    def _stamp(self) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._stamp()
        deadline = float("inf")
        for index in range(self.warmup + self.budget.train_iters):
            if index == self.warmup:
                deadline = time.perf_counter() + self.budget.train_max_s
            yield self.batch
            self._stamp()
            if index + 1 - self.warmup >= 2 and time.perf_counter() > deadline:
                return

    def samples(self) -> Samples:
        wall, cpu = (np.array(column) for column in zip(*self.stamps, strict=True))
        timed_wall = max(wall[-1] - wall[self.warmup], 1e-9)
        return Samples(list(np.diff(wall)[self.warmup:]), (cpu[-1] - cpu[self.warmup]) / timed_wall)


def bench_train_project(arch: str, size: int, device: torch.device, budget: Budget) -> Timing:
    """``train_one_epoch`` with the project's choices: bf16 where native, channels_last, BCE+Dice, clip."""
    torch.manual_seed(0)
    precision = resolve_precision("auto", device)  # the inference rule: bf16 only where the hardware has it
    model = build_model(arch).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    ctx = StepContext(device, precision, True, BCEDiceLoss(), optimizer, scaler, clip_grad_norm=1.0,
                      progress=False)
    images, masks = _random_batch(budget.train_batch, size)
    names = [str(i) for i in range(len(images))]
    loader = TimedLoader({"image": images, "mask": masks, "name": names}, budget)
    train_one_epoch(model, loader, ctx)
    return to_timing(loader.samples(), budget.train_batch, precision)


