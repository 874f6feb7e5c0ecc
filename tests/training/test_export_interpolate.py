"""petseg-export --interpolate: a weight-space average of two checkpoints of one architecture."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.factories import make_checkpoint
from training.export import main


def test_interpolated_weights_are_the_weighted_mean(tmp_path: Path) -> None:
    a = make_checkpoint(tmp_path / "a.pt", arch="unet", seed=1)
    b = make_checkpoint(tmp_path / "b.pt", arch="unet", seed=2)
    out = tmp_path / "mix.pt"
    assert main(["--model", str(a), "--interpolate", f"{b}:0.25", "--out", str(out)]) == 0
    mixed, first, second = (load_checkpoint(p).model_state for p in (out, a, b))
    for key, value in mixed.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * first[key] + 0.25 * second[key])
        else:
            assert torch.equal(value, first[key])
    assert "interpolated" in load_checkpoint(out).card


@pytest.mark.parametrize("weight", ["1.5", "x", ""])
def test_a_weight_outside_0_1_is_exit_2(tmp_path: Path, weight: str, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_checkpoint(tmp_path / "a.pt", arch="unet")
    assert main(["--model", str(a), "--interpolate", f"{a}:{weight}", "--out", str(tmp_path / "o.pt")]) == 2
    assert "CKPT:WEIGHT" in capsys.readouterr().err


def test_two_architectures_do_not_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_checkpoint(tmp_path / "a.pt", arch="unet")
    b = make_checkpoint(tmp_path / "b.pt", arch="resnet34_unet")
    assert main(["--model", str(a), "--interpolate", f"{b}:0.5", "--out", str(tmp_path / "o.pt")]) == 2
    assert "cannot interpolate" in capsys.readouterr().err


def test_interpolation_drops_the_runs_scores_and_metric_records_new_ones(tmp_path: Path) -> None:
    a = make_checkpoint(tmp_path / "a.pt", arch="unet", seed=1)
    out = tmp_path / "mix.pt"
    assert main(["--model", str(a), "--interpolate", f"{a}:0.5", "--out", str(out)]) == 0
    assert load_checkpoint(out).metrics == {}
    assert main(["--model", str(a), "--interpolate", f"{a}:0.5", "--metric", "val_dice=0.8125", "--out",
                 str(out)]) == 0
    assert load_checkpoint(out).metrics == {"val_dice": 0.8125}


def test_a_metric_that_is_not_a_number_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_checkpoint(tmp_path / "a.pt", arch="unet")
    assert main(["--model", str(a), "--metric", "val_dice=high", "--out", str(tmp_path / "o.pt")]) == 2
    assert "key=number" in capsys.readouterr().err
