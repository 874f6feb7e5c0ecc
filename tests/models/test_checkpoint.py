"""Checkpoint files: round trip, atomic writes, safe loading, clear refusals."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from models import build_model
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from models.inference import Segmenter
from tests.factories import make_checkpoint


def small_checkpoint(epoch: int = 3) -> Checkpoint:
    torch.manual_seed(1)
    model = build_model("unet")
    return Checkpoint(arch="unet", model_state=model.state_dict(), image_size=48, epoch=epoch,
                      metrics={"val_dice": 0.7}, config={"lr": 1e-3}, border_is_pet=False)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    original = small_checkpoint()
    loaded = load_checkpoint(save_checkpoint(original, tmp_path / "c.pt"))
    assert (loaded.arch, loaded.image_size, loaded.epoch, loaded.border_is_pet) == ("unet", 48, 3, False)
    assert loaded.metrics == {"val_dice": 0.7} and loaded.config == {"lr": 1e-3}
    assert loaded.mean == original.mean and loaded.created_at == original.created_at
    assert all(torch.equal(loaded.model_state[k], v) for k, v in original.model_state.items())


def test_checkpoint_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_checkpoint(small_checkpoint(), tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_checkpoint_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(small_checkpoint(epoch=1), tmp_path / "c.pt")

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(small_checkpoint(epoch=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "petseg-checkpoint/1", "payload": _Exploit(marker)}, handle)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_for_another_arch_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(small_checkpoint(), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="'unet' model, not 'resnet34_unet'"):
        load_checkpoint(path, expected_arch="ResNet34_UNet")


def test_checkpoint_weights_that_do_not_fit_the_arch_are_refused(tmp_path: Path) -> None:
    checkpoint = small_checkpoint()
    checkpoint.arch = "resnet34_unet"
    with pytest.raises(CheckpointError, match="do not fit architecture 'resnet34_unet'"):
        load_checkpoint(save_checkpoint(checkpoint, tmp_path / "c.pt")).build_model()


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00garbage that is not a zip or pickle", "cannot read checkpoint"),
    (None, "not a petseg checkpoint"),
])
def test_checkpoint_unreadable_or_foreign_files_are_refused(tmp_path: Path, content: bytes | None,
                                                           message: str) -> None:
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"model_state_dict": {}}, path)  # the report's format
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_checkpoint_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_half_is_smaller_and_predicts_the_same(tmp_path: Path) -> None:
    full = save_checkpoint(small_checkpoint(), tmp_path / "full.pt")
    half = save_checkpoint(load_checkpoint(full).half(), tmp_path / "half.pt")
    assert half.stat().st_size < 0.55 * full.stat().st_size
    x = torch.randn(1, 3, 48, 48)
    with torch.inference_mode():
        a = load_checkpoint(full).build_model().eval()(x)
        b = load_checkpoint(half).build_model().eval()(x)
    assert torch.allclose(a, b, atol=0.05, rtol=0.05)


def test_segmenter_refuses_untrained_checkpoints_unless_allowed(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "random.pt", epoch=0, image_size=32)
    with pytest.raises(CheckpointError, match="untrained"):
        Segmenter.from_file(path, device="cpu")
    assert Segmenter.from_file(path, device="cpu", allow_untrained=True).info.epoch == 0
