"""Building blocks shared by both architectures, and the pad/crop helpers that let them take any input size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DoubleConv", "Down", "Up", "pad_to_multiple", "crop_to"]


class DoubleConv(nn.Module):
    """(conv 3x3 without bias => BatchNorm => ReLU) * 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Down(nn.Module):
    """Max-pool 2x2 => DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Transposed conv 2x2/2 => concatenate the skip => DoubleConv.

    ``up_channels`` is what the transposed conv emits; the DoubleConv sees ``up_channels + skip_channels``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, up_channels: int | None = None) -> None:
        super().__init__()
        up_channels = up_channels or in_channels // 2
        self.up = nn.ConvTranspose2d(in_channels, up_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(up_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # Only reachable when a caller bypasses the model's own padding; keep shapes compatible anyway.
            dy = skip.shape[-2] - x.shape[-2]
            dx = skip.shape[-1] - x.shape[-1]
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad H and W (bottom/right, replicating the border) up to a multiple; return the original (H, W)."""
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h or pad_w:
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")
    return x, (height, width)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]
