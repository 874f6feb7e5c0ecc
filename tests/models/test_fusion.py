"""BatchNorm folding: the folded model computes what the trained one does, without a single BatchNorm left."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models import build_model
from models.engine.fusion import fold_batchnorm


def _trained_looking(arch: str) -> nn.Module:
    """Random running statistics and affine terms, as after training: folding an identity BN proves nothing."""
    torch.manual_seed(0)
    model = build_model(arch)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize(("arch", "pairs"), [("unet", 18), ("resnet34_unet", 46)])
def test_folding_removes_every_batchnorm_and_keeps_the_output(arch: str, pairs: int) -> None:
    model = _trained_looking(arch)
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(image)
        assert fold_batchnorm(model) == pairs
        folded = model(image)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(folded, expected, atol=1e-4, rtol=1e-4)


def test_folding_refuses_a_model_in_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_model("unet").train())


def test_folding_leaves_a_batchnorm_it_cannot_prove_follows_a_conv() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    assert fold_batchnorm(model) == 0
    assert isinstance(model[2], nn.BatchNorm2d)
