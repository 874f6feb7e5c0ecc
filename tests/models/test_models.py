"""Both architectures: logits of the input's size for any H, W; the registry; the hand-built encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import ARCHITECTURES, ResNet34_UNet, UNet, UnknownArchitectureError, build_model
from models.nets.resnet import BasicBlock, ResNet34Encoder

ARCHS = ["unet", "resnet34_unet"]


@pytest.fixture(scope="module", params=ARCHS)
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return build_model(request.param).eval()


@pytest.mark.parametrize("size", [(37, 53), (65, 33), (1, 1)], ids=["37x53", "65x33", "1x1"])
def test_model_returns_logits_of_the_input_size(model: nn.Module, size: tuple[int, int]) -> None:
    with torch.inference_mode():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_model_returns_logits_not_probabilities(model: nn.Module) -> None:
    # Sigmoid belongs to inference and BCE-with-logits to training, not to the model.
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert isinstance(model.head, nn.Conv2d) and model.head.kernel_size == (1, 1)


@pytest.mark.parametrize("arch", ["unet", pytest.param("resnet34_unet", marks=pytest.mark.slow)])
def test_model_gradients_reach_every_parameter_in_train_mode(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch).train()
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []
    first = next(p for p in model.parameters() if p.ndim == 4)
    assert first.grad.abs().sum() > 0  # reaches the first conv through the whole U


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("unet", UNet),
        ("UNet", UNet),
        ("resnet34_unet", ResNet34_UNet),
        ("ResNet34_UNet", ResNet34_UNet),
        ("resnet34-unet", ResNet34_UNet),
    ],
)
def test_build_model_accepts_the_report_spellings(name: str, cls: type) -> None:
    assert isinstance(build_model(name), cls)


def test_build_model_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownArchitectureError) as error:
        build_model("segformer")
    assert "'segformer'" in str(error.value)
    assert all(name in str(error.value) for name in ARCHITECTURES)


def test_build_model_unknown_name_is_a_value_error() -> None:
    # The CLIs turn ValueError into exit code 2: the registry error must be one.
    assert issubclass(UnknownArchitectureError, ValueError)


def test_resnet34_encoder_has_3_4_6_3_basic_blocks() -> None:
    encoder = ResNet34Encoder()
    stages = [encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    assert all(type(block) is BasicBlock for stage in stages for block in stage)
    assert encoder.stem[0].kernel_size == (7, 7) and encoder.stem[0].stride == (2, 2)


def test_resnet34_encoder_projects_exactly_where_stride_or_channels_change() -> None:
    encoder = ResNet34Encoder()
    for stage in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        for block in stage:
            changes = block.conv1.stride != (1, 1) or block.conv1.in_channels != block.conv2.out_channels
            if not changes:
                assert block.downsample is None
                continue
            projection = block.downsample[0]
            assert isinstance(projection, nn.Conv2d) and projection.kernel_size == (1, 1)
            assert projection.stride == block.conv1.stride
            assert (projection.in_channels, projection.out_channels) == (
                block.conv1.in_channels,
                block.conv2.out_channels,
            )
            assert isinstance(block.downsample[1], nn.BatchNorm2d)
    assert [block.downsample is not None for block in encoder.layer1] == [False, False, False]
    assert [
        stage[0].downsample is not None for stage in (encoder.layer2, encoder.layer3, encoder.layer4)
    ] == [True, True, True]


def test_resnet34_encoder_feature_shapes() -> None:
    with torch.inference_mode():
        features = ResNet34Encoder().eval()(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 48),
        (64, 16, 24),
        (128, 8, 12),
        (256, 4, 6),
        (512, 2, 3),
    ]
    assert tuple(f.shape[1] for f in features) == ResNet34Encoder.out_channels


def test_resnet34_encoder_has_torchvision_resnet34_parameter_count() -> None:
    # torchvision's resnet34 has 21,797,672 parameters; its fc layer (512*1000 + 1000) is no encoder part.
    assert sum(p.numel() for p in ResNet34Encoder().parameters()) == 21_797_672 - 513_000


def test_unet_parameter_count_is_the_reports() -> None:
    assert sum(p.numel() for p in UNet().parameters()) == pytest.approx(31.04e6, rel=0.01)


def test_resnet34_unet_parameter_count_is_in_the_expected_ballpark() -> None:
    # 21.3M encoder + a 512-256-128-64-32 decoder.
    assert sum(p.numel() for p in ResNet34_UNet().parameters()) == pytest.approx(30.9e6, rel=0.05)


def test_unet_has_the_reports_topology() -> None:
    model = UNet()
    assert model.down4.conv.block[0].out_channels == 1024
    assert isinstance(model.up1.up, nn.ConvTranspose2d) and model.up1.up.stride == (2, 2)
