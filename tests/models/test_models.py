"""Both architectures: logits of the input's size for any H, W; the registry; the hand-built encoder."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models import ResNet34_UNet, UNet, UnknownArchitectureError, build_model
from models.resnet import BasicBlock, ResNet34Encoder

ARCHS = ["unet", "resnet34_unet"]


@pytest.fixture(scope="module", params=ARCHS)
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return build_model(request.param).eval()


@pytest.mark.parametrize("size", [(37, 53), (65, 33), (32, 32), (1, 1)])
def test_model_returns_logits_of_the_input_size(model: nn.Module, size: tuple[int, int]) -> None:
    with torch.inference_mode():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_model_returns_logits_not_probabilities(model: nn.Module) -> None:
    # Sigmoid belongs to inference and BCE-with-logits to training, not to the model.
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert isinstance(model.head, nn.Conv2d) and model.head.kernel_size == (1, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_gradients_reach_the_first_layer(arch: str) -> None:
    model = build_model(arch).train()
    model(torch.randn(2, 3, 40, 36)).mean().backward()
    first = next(p for p in model.parameters() if p.ndim == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "cls"), [("unet", UNet), ("UNet", UNet), ("resnet34_unet", ResNet34_UNet),
                                           ("ResNet34_UNet", ResNet34_UNet), ("resnet34-unet", ResNet34_UNet)])
def test_build_model_accepts_the_report_spellings(name: str, cls: type) -> None:
    assert isinstance(build_model(name), cls)


def test_build_model_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownArchitectureError, match="resnet34_unet, unet"):
        build_model("segformer")


def test_resnet34_encoder_has_3_4_6_3_basic_blocks_with_projections_where_shapes_change() -> None:
    encoder = ResNet34Encoder()
    stages = [encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    assert all(isinstance(block, BasicBlock) for stage in stages for block in stage)
    projected = [[block.downsample is not None for block in stage] for stage in stages]
    assert projected == [[False] * 3, [True] + [False] * 3, [True] + [False] * 5, [True] + [False] * 2]
    assert encoder.stem[0].kernel_size == (7, 7) and encoder.stem[0].stride == (2, 2)


def test_resnet34_encoder_feature_shapes() -> None:
    with torch.inference_mode():
        features = ResNet34Encoder().eval()(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 32, 48), (64, 16, 24), (128, 8, 12), (256, 4, 6),
                                                       (512, 2, 3)]


def test_unet_has_the_reports_topology() -> None:
    model = UNet()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(31.04e6, rel=0.01)
    assert model.down4.conv.block[0].out_channels == 1024
    assert isinstance(model.up1.up, nn.ConvTranspose2d) and model.up1.up.stride == (2, 2)
