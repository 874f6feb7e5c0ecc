"""Inference-only rewrites of a trained model: fold each BatchNorm into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with rescaled
weights and a bias. Folding removes a full read and write of every activation per BatchNorm, which on the CPU is
about a fifth of the UNet's inference time. Training keeps the unfolded model: the statistics still move there.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats
            and conv.out_channels == norm.num_features)


def _fold_sequential(block: nn.Sequential) -> int:
    names = list(block._modules)
    folded = 0
    for first, second in zip(names, names[1:]):
        conv, norm = block._modules[first], block._modules[second]
        if conv is not None and norm is not None and _foldable(conv, norm):
            block._modules[first] = fuse_conv_bn_eval(conv, norm)
            block._modules[second] = nn.Identity()
            folded += 1
    return folded


def _fold_declared_pairs(module: nn.Module) -> int:
    """Modules whose forward applies ``bn(conv(x))`` outside a Sequential name the pairs in ``conv_bn_pairs``."""
    folded = 0
    for conv_name, norm_name in getattr(module, "conv_bn_pairs", ()):
        conv, norm = getattr(module, conv_name), getattr(module, norm_name)
        if _foldable(conv, norm):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, nn.Identity())
            folded += 1
    return folded


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every Conv2d -> BatchNorm2d pair the model's structure makes explicit; return how many.

    The model must be in eval mode: folding bakes the running statistics into the weights.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (call .eval() first)")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            folded += _fold_sequential(module)
        folded += _fold_declared_pairs(module)
    return folded
