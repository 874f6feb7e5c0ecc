"""``--encoder-weights``: ImageNet (downloaded once, checksum-verified, cached) or a local file for the encoder.

Pretrained features are what lets a model trained on a few hundred photos tell an animal from a patterned sofa.
``imagenet`` fetches torchvision's published ResNet-34 weights (the file name's sha256 prefix is checked) into
``$PETSEG_CACHE_DIR`` (default ``$XDG_CACHE_HOME/petseg`` or ``~/.cache/petseg``); a path loads a state dict in
torchvision's layout or the encoder's own, always with ``weights_only=True``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from models.checkpoint import CheckpointError
from models.pretrained import IMAGENET_RESNET34_SHA256_PREFIX, IMAGENET_RESNET34_URL
from training.download import fetch_file

__all__ = ["cache_dir", "read_encoder_weights"]


def cache_dir() -> Path:
    if os.environ.get("PETSEG_CACHE_DIR"):
        return Path(os.environ["PETSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "petseg"


def read_encoder_weights(spec: str, *, url: str = IMAGENET_RESNET34_URL,
                         sha256_prefix: str = IMAGENET_RESNET34_SHA256_PREFIX, progress: bool = True
                         ) -> dict[str, Tensor]:
    """The state dict named by ``spec``: ``imagenet`` (downloaded from ``url`` on first use) or a file path."""
    if spec == "imagenet":
        path = fetch_file(url, cache_dir() / url.rsplit("/", 1)[-1], algorithm="sha256", digest=sha256_prefix,
                          progress=progress)
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights not found: {path} (give a file or 'imagenet')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise CheckpointError(f"cannot read encoder weights {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state
