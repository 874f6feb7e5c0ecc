"""ImageNet weights for the hand-built ResNet-34 encoder, from torchvision's published checkpoint.

torchvision names the layers ``conv1``/``bn1``/``layerN.i.*``/``fc``; ``models.nets.resnet.ResNet34Encoder`` names the
stem ``stem.0``/``stem.1`` and keeps the ``layerN.i.*`` names. The mapping is checked key by key and shape by
shape, so a file of another network fails with a message instead of loading half its weights.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from models.checkpoint import CheckpointError

__all__ = ["IMAGENET_RESNET34_SHA256_PREFIX", "IMAGENET_RESNET34_URL", "encoder_state_from_torchvision",
           "load_encoder_state"]

# torchvision.models.ResNet34_Weights.IMAGENET1K_V1 (top-1 73.3%); the file name carries its sha256 prefix.
IMAGENET_RESNET34_URL = "https://download.pytorch.org/models/resnet34-b627a593.pth"
IMAGENET_RESNET34_SHA256_PREFIX = "b627a593"

_STEM = {"conv1.": "stem.0.", "bn1.": "stem.1."}
_BLOCK = re.compile(r"^layer[1-4]\.\d+\.(conv[12]|bn[12]|downsample\.[01])\.")


def encoder_state_from_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ResNet-34 state dict to ``ResNet34Encoder``'s names; the classifier (``fc``) is
    dropped. Raises ``CheckpointError`` on any key that is neither."""
    renamed: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        stem = next((new + key[len(old):] for old, new in _STEM.items() if key.startswith(old)), None)
        if stem is not None:
            renamed[stem] = value
        elif _BLOCK.match(key):
            renamed[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"not a torchvision ResNet-34 state dict: unexpected keys {unknown[:5]}")
    return renamed


def load_encoder_state(encoder: nn.Module, state: Mapping[str, Tensor]) -> int:
    """Copy ``state`` (torchvision's names or the encoder's own) into ``encoder``; every encoder tensor must
    be given with its exact shape. Returns the number of tensors loaded."""
    if any(key.startswith(("conv1.", "bn1.", "fc.")) for key in state):
        state = encoder_state_from_torchvision(state)
    own = encoder.state_dict()
    # Files saved before BatchNorm counted its batches lack num_batches_tracked; PyTorch's own loader
    # accepts that too (the counter only matters for momentum=None).
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"encoder weights do not fit ResNet-34: missing {missing[:5]}, unexpected {extra[:5]}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"encoder weights have the wrong shapes: {wrong[:3]}")
    with torch.no_grad():
        encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return len(own)
