"""The prediction ensemble behind ``petseg-evaluate --ensemble``: the mean of its models' maps, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.engine.ensemble import EnsembleSegmenter
from models.engine.segmenter import SegmenterBase
from training import evaluate
from training.data import list_split
from training.images import read_trimap, trimap_to_mask

CPU = ["--device", "cpu", "--precision", "fp32"]


class Flat(SegmenterBase):
    """Answers one probability everywhere, at a given input size and border convention."""

    def __init__(self, value: float, image_size: int = 8, border_is_pet: bool = True) -> None:
        self.value, self.image_size = value, image_size
        self.checkpoint = type("Checkpoint", (), {"border_is_pet": border_is_pet})()
        self.device, self.precision, self.runtime, self.info = torch.device("cpu"), "fp32", "torch", None
        self.warmed: list[tuple[int, ...]] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.full((batch.shape[0], self.image_size, self.image_size), self.value)

    def warmup(self, batch_sizes=(1,)) -> float:  # noqa: ANN001
        self.warmed.append(tuple(batch_sizes))
        return 0.5


def test_the_ensemble_answers_the_mean_of_its_models_maps() -> None:
    members = [Flat(0.2), Flat(0.4), Flat(0.9)]
    ensemble = EnsembleSegmenter(members)
    prob = ensemble.predict(np.zeros((30, 40, 3), np.uint8))
    assert prob.shape == (30, 40) and np.allclose(prob, 0.5)
    assert ensemble.warmup((1, 4)) == 1.5 and all(m.warmed == [(1, 4)] for m in members)


@pytest.mark.parametrize("members, message", [
    ([Flat(0.5)], "at least two"),
    ([Flat(0.5, image_size=8), Flat(0.5, image_size=16)], "input sizes"),
    ([Flat(0.5, border_is_pet=True), Flat(0.5, border_is_pet=False)], "border conventions"),
])
def test_an_ensemble_that_cannot_be_averaged_is_refused(members: list[SegmenterBase], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EnsembleSegmenter(members)


def _sure_everywhere(source: Path, path: Path) -> Path:
    """The same model with its head's bias at +100: probability 1 on every pixel."""
    checkpoint = load_checkpoint(source)
    checkpoint.model_state["head.bias"] = torch.full_like(checkpoint.model_state["head.bias"], 100.0)
    return save_checkpoint(checkpoint, path)


def test_evaluate_with_an_ensemble_scores_the_mean_map(pet_dataset: Path, tiny_checkpoint: Path,
                                                       tmp_path: Path) -> None:
    """(p + 1) / 2 > 0.5 wherever p > 0: averaged with a model sure of a pet everywhere, every pixel is pet."""
    sure = _sure_everywhere(tiny_checkpoint, tmp_path / "sure.pt")
    out = tmp_path / "ensemble.json"
    assert evaluate.main(["--model", str(tiny_checkpoint), "--ensemble", str(sure), "--data_path", str(pet_dataset),
                          "--split", "valid", "--out", str(out), *CPU]) == 0
    report = json.loads(out.read_text())
    assert report["ensemble"] == [str(sure)]
    for sample in list_split(pet_dataset, "valid"):
        truth = trimap_to_mask(read_trimap(sample.trimap_path), True) > 0
        everything_dice = 2 * truth.sum() / (truth.sum() + truth.size)
        assert report["per_image"][sample.name] == pytest.approx(everything_dice, abs=1e-6), sample.name


def test_an_ensemble_of_one_model_with_itself_scores_as_the_model(pet_dataset: Path, tiny_checkpoint: Path,
                                                                  tmp_path: Path) -> None:
    reports = []
    for extra in ([], ["--ensemble", str(tiny_checkpoint)]):
        out = tmp_path / f"r{len(extra)}.json"
        assert evaluate.main(["--model", str(tiny_checkpoint), *extra, "--data_path", str(pet_dataset),
                              "--split", "valid", "--out", str(out), *CPU]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[1]["per_image"] == pytest.approx(reports[0]["per_image"])


def test_an_ensemble_of_different_input_sizes_is_exit_2(pet_dataset: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tests.factories import make_checkpoint

    other = make_checkpoint(tmp_path / "other.pt", image_size=32)
    assert evaluate.main(["--model", str(tiny_checkpoint), "--ensemble", str(other), "--data_path",
                          str(pet_dataset), "--split", "valid", "--out", str(tmp_path / "r.json"), *CPU]) == 2
    assert "input sizes" in capsys.readouterr().err
