"""evaluate and predict from the command line, on the synthetic dataset with a small real checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import evaluate, predict


def test_evaluate_writes_a_report_with_per_image_and_pooled_scores(pet_dataset: Path, tiny_checkpoint: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = evaluate.main(["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "test",
                          "--out", str(out), "--device", "cpu"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["images"] == 4 and len(report["per_image"]) == 4
    assert 0.0 <= report["dice"] <= 1.0 and 0.0 <= report["dice_micro"] <= 1.0 and 0.0 <= report["iou"] <= 1.0
    assert report["worst"][0]["dice"] == min(report["per_image"].values())


def test_predict_writes_masks_at_each_original_size(pet_dataset: Path, tiny_checkpoint: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "masks"
    images = pet_dataset / "images"
    assert predict.main(["--model", str(tiny_checkpoint), str(images), "--out", str(out), "--device", "cpu",
                         "--overlay"]) == 0
    for image_path in images.iterdir():
        mask = Image.open(out / f"{image_path.stem}_mask.png")
        assert mask.size == Image.open(image_path).size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        assert (out / f"{image_path.stem}_overlay.png").is_file()


def test_predict_a_split_with_a_comparison_grid(pet_dataset: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    assert predict.main(["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "valid",
                         "--out", str(tmp_path / "m"), "--grid", str(grid), "--device", "cpu"]) == 0
    assert Image.open(grid).format == "PNG"


def test_predict_missing_input_is_exit_2(tiny_checkpoint: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert predict.main(["--model", str(tiny_checkpoint), str(tmp_path / "nope.jpg")]) == 2
    assert "input not found" in capsys.readouterr().err


def test_evaluate_missing_checkpoint_is_exit_2(pet_dataset: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--model", str(tmp_path / "none.pt"), "--data_path", str(pet_dataset)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
