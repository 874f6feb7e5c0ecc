"""The report's UNet: four down steps from 64 to 1024 channels, four up steps back, a 1x1 head."""
from __future__ import annotations

from torch import Tensor, nn

from models.nets.layers import DoubleConv, Down, Up, crop_to, pad_to_multiple

__all__ = ["UNet"]


class UNet(nn.Module):
    """UNet (Ronneberger et al., 2015) with same-padding convs and BatchNorm.

    Input (B, in_channels, H, W) of any H, W; output logits (B, out_channels, H, W). Apply a sigmoid at inference.
    """

    size_multiple = 16  # four 2x down-samplings

    def __init__(self, in_channels: int = 3, out_channels: int = 1) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, 64)
        self.down1 = Down(64, 128)
        self.down2 = Down(128, 256)
        self.down3 = Down(256, 512)
        self.down4 = Down(512, 1024)
        self.up1 = Up(1024, 512, 512)
        self.up2 = Up(512, 256, 256)
        self.up3 = Up(256, 128, 128)
        self.up4 = Up(128, 64, 64)
        self.head = nn.Conv2d(64, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, self.size_multiple)
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return crop_to(self.head(x), size)
