"""torchrun support: DistributedDataParallel with NCCL on GPUs and gloo on CPUs; rank 0 owns the files."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.loop import EpochResult
from training.metrics import SegmentationMetrics

__all__ = ["DistInfo", "ShardSampler", "cleanup_distributed", "gather_result", "init_distributed"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class ShardSampler(torch.utils.data.Sampler[int]):
    """Every rank takes every world_size-th index, without the padding DistributedSampler adds: in evaluation
    each image must be scored exactly once, even when the split does not divide evenly."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, length, info.world_size))

    def __iter__(self):  # noqa: ANN204
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank)


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_result(result: EpochResult, info: DistInfo) -> EpochResult:
    """Merge every rank's per-image scores so metrics cover the whole split, not one shard."""
    if not info.enabled:
        return result
    m = result.metrics
    payload = (result.loss, m.count, m.names, m.dice, m.iou, m.intersection, m.pred_pixels, m.target_pixels)
    gathered: list[tuple] = [None] * info.world_size  # type: ignore[list-item]
    dist.all_gather_object(gathered, payload)
    merged = SegmentationMetrics()
    loss_sum, count = 0.0, 0
    for loss, n, names, dice, iou, inter, pred_px, target_px in gathered:
        loss_sum += loss * n
        count += n
        merged.names += names
        merged.dice += dice
        merged.iou += iou
        merged.intersection += inter
        merged.pred_pixels += pred_px
        merged.target_pixels += target_px
    return EpochResult(loss_sum / max(count, 1), merged, result.source_losses)  # per source: this rank's
