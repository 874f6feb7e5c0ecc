"""Name -> architecture registry. The report's spellings (``UNet``, ``ResNet34_UNet``) are aliases."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from models.nets.resnet34_unet import ResNet34UNet
from models.nets.unet import UNet

__all__ = ["ARCHITECTURES", "build_model", "canonical_arch_name", "UnknownArchitectureError"]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "resnet34_unet": ResNet34UNet,
}
_ALIASES = {"unet": "unet", "resnet34_unet": "resnet34_unet", "resnet34unet": "resnet34_unet"}


class UnknownArchitectureError(ValueError):
    """Raised for an architecture name that is not registered; the message lists the known names."""


def canonical_arch_name(name: str) -> str:
    """Map ``UNet``, ``ResNet34_UNet``, ``resnet34-unet``... to the registry key."""
    key = name.strip().lower().replace("-", "_")
    if key not in _ALIASES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known: {known} (the report's UNet and ResNet34_UNet work too)"
        )
    return _ALIASES[key]


def build_model(name: str, in_channels: int = 3, out_channels: int = 1) -> nn.Module:
    """Build a randomly initialised model by name."""
    return ARCHITECTURES[canonical_arch_name(name)](in_channels=in_channels, out_channels=out_channels)
