"""ResNet-34 encoder built by hand (He et al., 2016): no torchvision dependency.

Contract: ``ResNet34Encoder(x)`` returns five feature maps, from fine to coarse:
``f1`` stem (64, H/2), ``f2`` layer1 (64, H/4), ``f3`` layer2 (128, H/8), ``f4`` layer3 (256, H/16),
``f5`` layer4 (512, H/32). Their channel counts are in ``out_channels``.
"""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet34Encoder"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, used by projection shortcuts."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    expansion: int = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # for models.engine.fusion.fold_batchnorm

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = out + identity
        return self.relu(out)


class ResNet34Encoder(nn.Module):
    """7x7/2 stem, 3x3/2 max-pool, BasicBlock stages of [3, 4, 6, 3] blocks at 64/128/256/512 channels."""

    out_channels: tuple[int, ...] = (64, 64, 128, 256, 512)
    reduction = 32

    def __init__(self, in_channels: int = 3, layers: tuple[int, int, int, int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(64, 64, layers[0], stride=1)
        self.layer2 = self._make_stage(64, 128, layers[1], stride=2)
        self.layer3 = self._make_stage(128, 256, layers[2], stride=2)
        self.layer4 = self._make_stage(256, 512, layers[3], stride=2)
        self._init_weights()

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        stage = [BasicBlock(in_channels, out_channels, stride)]
        stage += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch so every block starts as identity (arXiv 1706.02677).
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        f1 = self.stem(x)
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]
