"""Pretrained encoder weights: torchvision's key layout maps onto the hand-built ResNet-34, and ``imagenet``
is downloaded (from a loopback server here), checksum-verified and cached."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch

from models import build_model
from models.checkpoint import CheckpointError
from models.nets.resnet import ResNet34Encoder
from models.pretrained import encoder_state_from_torchvision, load_encoder_state
from tests.training.test_download import PetServer, server  # noqa: F401 - the loopback server fixture
from training.download import DownloadError
from training.encoder_weights import read_encoder_weights
from training.train import main as train_main


def torchvision_layout(seed: int = 0) -> dict[str, torch.Tensor]:
    """A ResNet-34 state dict under torchvision's names (conv1, bn1, layerN.i.*, fc), random values."""
    torch.manual_seed(seed)
    encoder = ResNet34Encoder()
    for p in encoder.parameters():
        torch.nn.init.normal_(p)
    state = {}
    for key, value in encoder.state_dict().items():
        key = key.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
        state[key] = value.clone()
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return state


def test_torchvision_names_map_onto_the_encoder() -> None:
    state = torchvision_layout()
    encoder = ResNet34Encoder()
    assert load_encoder_state(encoder, state) == len(encoder.state_dict())
    loaded = encoder.state_dict()
    torch.testing.assert_close(loaded["stem.0.weight"], state["conv1.weight"])
    torch.testing.assert_close(loaded["stem.1.running_var"], state["bn1.running_var"])
    torch.testing.assert_close(loaded["layer3.5.conv2.weight"], state["layer3.5.conv2.weight"])
    torch.testing.assert_close(loaded["layer2.0.downsample.1.bias"], state["layer2.0.downsample.1.bias"])
    assert "fc.weight" not in encoder_state_from_torchvision(state)


def test_encoder_weights_change_the_models_output() -> None:
    model = build_model("resnet34_unet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = model(x)
        load_encoder_state(model.encoder, torchvision_layout())
        after = model(x)
    assert not torch.allclose(before, after)


def test_foreign_state_dicts_are_refused() -> None:
    with pytest.raises(CheckpointError, match="unexpected keys"):
        encoder_state_from_torchvision({"conv1.weight": torch.zeros(1), "features.0.weight": torch.zeros(1)})
    state = torchvision_layout()
    del state["layer4.2.bn2.weight"]
    with pytest.raises(CheckpointError, match="missing"):
        load_encoder_state(ResNet34Encoder(), state)
    state = torchvision_layout()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_encoder_state(ResNet34Encoder(), state)


def serialized(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_imagenet_is_downloaded_once_verified_and_cached(server: PetServer, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSEG_CACHE_DIR", str(tmp_path / "cache"))
    blob = serialized(torchvision_layout())
    server.state.files["/models/resnet34-test.pth"] = blob
    url = f"http://127.0.0.1:{server.server_address[1]}/models/resnet34-test.pth"
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    first = read_encoder_weights("imagenet", url=url, sha256_prefix=prefix, progress=False)
    second = read_encoder_weights("imagenet", url=url, sha256_prefix=prefix, progress=False)
    assert len(server.state.requests) == 1  # the second call used the cache
    assert (tmp_path / "cache" / "resnet34-test.pth").is_file()
    torch.testing.assert_close(first["layer1.0.conv1.weight"], second["layer1.0.conv1.weight"])


def test_imagenet_with_a_wrong_checksum_is_refused_and_deleted(server: PetServer, tmp_path: Path,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSEG_CACHE_DIR", str(tmp_path / "cache"))
    server.state.files["/w.pth"] = serialized(torchvision_layout())
    url = f"http://127.0.0.1:{server.server_address[1]}/w.pth"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        read_encoder_weights("imagenet", url=url, sha256_prefix="00000000", progress=False)
    assert not any((tmp_path / "cache").iterdir())


def test_train_with_encoder_weights_from_a_file(pets30: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    weights = tmp_path / "resnet34.pth"
    torch.save(torchvision_layout(), weights)
    with caplog.at_level("INFO"):
        code = train_main(["--data_path", str(pets30), "--out", str(tmp_path / "run"), "--image-size", "32",
                           "--limit", "8", "-b", "8", "--workers", "0", "--device", "cpu", "-n", "resnet34_unet",
                           "-e", "1", "-lr", "1e-12", "--encoder-weights", str(weights)])
    assert code == 0 and "encoder: 216 tensors loaded" in caplog.text


def test_encoder_weights_for_the_plain_unet_is_exit_2(pets30: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "resnet34.pth"
    torch.save(torchvision_layout(), weights)
    code = train_main(["--data_path", str(pets30), "--out", str(tmp_path / "run"), "--image-size", "32",
                       "--limit", "8", "--workers", "0", "--device", "cpu", "-n", "unet",
                       "--encoder-weights", str(weights)])
    assert code == 2 and "resnet34_unet" in capsys.readouterr().err


def test_encoder_weights_file_that_is_not_a_state_dict_is_exit_2(pets30: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    code = train_main(["--data_path", str(pets30), "--out", str(tmp_path / "run"), "--image-size", "32",
                       "--limit", "8", "--workers", "0", "--device", "cpu", "-n", "resnet34_unet",
                       "--encoder-weights", str(bad)])
    assert code == 2 and "cannot read encoder weights" in capsys.readouterr().err
