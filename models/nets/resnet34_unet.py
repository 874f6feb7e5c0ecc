"""ResNet34_UNet: the hand-built ResNet-34 encoder with the report's UNet decoder.

The report's figure: the deepest stage (512, H/32) is the bottleneck; each decoder step up-samples with a 2x2
transposed conv, concatenates the encoder feature of the same resolution and applies a DoubleConv
(512 -> 256 -> 128 -> 64 channels); a fifth up-sampling returns to full resolution before the 1x1 head.
"""
from __future__ import annotations

from torch import Tensor, nn

from models.nets.layers import DoubleConv, Up, crop_to, pad_to_multiple
from models.nets.resnet import ResNet34Encoder

__all__ = ["ResNet34UNet"]


class ResNet34UNet(nn.Module):
    """Input (B, in_channels, H, W) of any H, W; output logits (B, out_channels, H, W)."""

    size_multiple = ResNet34Encoder.reduction

    def __init__(self, in_channels: int = 3, out_channels: int = 1) -> None:
        super().__init__()
        self.encoder = ResNet34Encoder(in_channels)
        c1, c2, c3, c4, c5 = self.encoder.out_channels
        # Decoder widths follow the report: up-sample keeps the channel count, the DoubleConv halves it.
        self.up1 = Up(c5, c4, 512, up_channels=512)  # H/32 -> H/16, + layer3
        self.up2 = Up(512, c3, 256, up_channels=256)  # H/16 -> H/8,  + layer2
        self.up3 = Up(256, c2, 128, up_channels=128)  # H/8  -> H/4,  + layer1
        self.up4 = Up(128, c1, 64, up_channels=64)  # H/4  -> H/2,  + stem
        self.up5 = nn.Sequential(  # H/2 -> H: no skip at full resolution
            nn.ConvTranspose2d(64, 32, kernel_size=2, stride=2),
            DoubleConv(32, 32),
        )
        self.head = nn.Conv2d(32, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x, size = pad_to_multiple(x, self.size_multiple)
        f1, f2, f3, f4, f5 = self.encoder(x)
        x = self.up1(f5, f4)
        x = self.up2(x, f3)
        x = self.up3(x, f2)
        x = self.up4(x, f1)
        x = self.up5(x)
        return crop_to(self.head(x), size)
