"""Segmentation models: UNet and ResNet34_UNet, both returning logits (B, 1, H, W) for any H, W."""
from models.nets.registry import ARCHITECTURES, UnknownArchitectureError, build_model, canonical_arch_name
from models.nets.resnet34_unet import ResNet34UNet
from models.nets.unet import UNet

ResNet34_UNet = ResNet34UNet  # the report's spelling

__all__ = [
    "ARCHITECTURES",
    "ResNet34UNet",
    "ResNet34_UNet",
    "UNet",
    "UnknownArchitectureError",
    "build_model",
    "canonical_arch_name",
]
