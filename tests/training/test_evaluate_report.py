"""petseg-evaluate reports what the model-quality work is judged by: both border conventions, failures, breeds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import evaluate
from training.data import list_split
from training.images import read_trimap
from training.metrics import SegmentationMetrics, breed_of


@pytest.fixture(scope="module")
def report(pet_dataset: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("eval") / "report.json"
    assert evaluate.main(["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "valid",
                          "--folds", "5", "--fold", "2", "--out", str(out), "--device", "cpu",
                          "--precision", "fp32"]) == 0
    return json.loads(out.read_text())


def test_report_scores_the_requested_fold(report: dict, pet_dataset: Path) -> None:
    assert sorted(report["per_image"]) == sorted(s.name for s in list_split(pet_dataset, "valid", 5, 2))


def test_report_gives_the_share_under_0_7(report: dict) -> None:
    scores = list(report["per_image"].values())
    assert report["below_0.7"] == pytest.approx(np.mean([d < 0.7 for d in scores]))


def test_report_gives_per_breed_means(report: dict) -> None:
    breeds = report["per_breed"]
    assert set(breeds) == {breed_of(name) for name in report["per_image"]}
    for breed, row in breeds.items():
        mine = [d for n, d in report["per_image"].items() if breed_of(n) == breed]
        assert row["images"] == len(mine) and row["dice"] == pytest.approx(np.mean(mine))


def test_report_scores_the_border_ignored_too(report: dict, pet_dataset: Path) -> None:
    ignored = report["border_ignored"]
    assert ignored["images"] == report["images"] and 0.0 <= ignored["dice"] <= 1.0
    has_border = any((read_trimap(s.trimap_path) == 3).any() for s in list_split(pet_dataset, "valid", 5, 2))
    assert has_border and ignored["dice"] != report["dice"]


def test_ignored_pixels_count_for_neither_side() -> None:
    pred = torch.zeros(1, 4, 4, dtype=torch.bool)
    truth = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred[0, :2] = True   # rows 0-1 predicted
    truth[0, :3] = True  # rows 0-2 true; row 2 is the border band
    border = torch.zeros(1, 4, 4, dtype=torch.bool)
    border[0, 2] = True
    plain, ignored = SegmentationMetrics(), SegmentationMetrics()
    plain.update(pred, truth)
    ignored.update(pred, truth, ignore=border)
    assert plain.dice[0] == pytest.approx(2 * 8 / (8 + 12)) and ignored.dice[0] == pytest.approx(1.0)


def test_breed_is_the_name_before_the_last_underscore() -> None:
    assert breed_of("american_bulldog_147") == "american_bulldog" and breed_of("Bengal_3") == "Bengal"
    assert breed_of("photo") == "photo"


def test_share_below_and_groups() -> None:
    metrics = SegmentationMetrics(names=["a_1", "a_2", "b_1"], dice=[0.5, 0.9, 0.69], iou=[0.0, 0.0, 0.0])
    assert metrics.share_below(0.7) == pytest.approx(2 / 3)
    groups = metrics.by_group(breed_of)
    assert groups["a"] == {"dice": pytest.approx(0.7), "below_0.7": 0.5, "images": 2}
    assert groups["b"]["below_0.7"] == 1.0


def test_guided_refinement_is_scored_at_full_resolution(pet_dataset: Path, tiny_checkpoint: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "guided.json"
    assert evaluate.main(["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "valid",
                          "--refine", "guided", "--out", str(out), "--device", "cpu", "--precision", "fp32"]) == 0
    report = json.loads(out.read_text())
    assert report["refine"] == "guided" and report["images"] == len(list_split(pet_dataset, "valid"))
    assert all(0.0 <= d <= 1.0 for d in report["per_image"].values())


def test_background_crops_measure_what_is_taken_for_a_pet(pet_dataset: Path) -> None:
    from models.engine.segmenter import SegmenterBase
    from training.evaluate import background_false_positives

    class Constant(SegmenterBase):
        """Answers the same probability everywhere: all pet above the threshold, none below."""

        def __init__(self, value: float) -> None:
            self.value = value

        def predict(self, image, output_size=None):  # noqa: ANN001, ANN201
            return np.full(image.shape[:2], self.value, np.float32)

    samples = list_split(pet_dataset, "train")
    everything = background_false_positives(Constant(0.9), samples)
    nothing = background_false_positives(Constant(0.1), samples)
    assert everything["crops"] == nothing["crops"] > 0
    assert everything["pet_fraction"] == 1.0 and everything["crops_over_10pct"] == 1.0
    assert nothing["pet_fraction"] == 0.0 and nothing["crops_over_10pct"] == 0.0


def test_background_crops_in_the_report(pet_dataset: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bg.json"
    assert evaluate.main(["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "train",
                          "--background-crops", "--out", str(out), "--device", "cpu", "--precision", "fp32"]) == 0
    crops = json.loads(out.read_text())["background_crops"]
    assert crops["crops"] > 0 and 0.0 <= crops["pet_fraction"] <= 1.0


def test_worst_grid_is_drawn(pet_dataset: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    grid = tmp_path / "worst.png"
    assert evaluate.main(["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "valid",
                          "--worst", "2", "--worst-grid", str(grid), "--out", str(tmp_path / "r.json"),
                          "--device", "cpu", "--precision", "fp32"]) == 0
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.height > image.width / 3  # two rows of three panels


class AnswersFromTrimaps:
    """A stand-in model that answers, for each photo of the split, a mask drawn from that photo's trimap."""

    def __init__(self, samples: list, pet_values: tuple[int, ...]) -> None:
        from training.data import load_pair

        self.answers = {}
        for sample in samples:
            image, trimap = load_pair(sample)
            self.answers[image.tobytes()] = np.isin(trimap, pet_values).astype(np.float32)

    def predict_batch(self, images: list, output_sizes: object = None) -> list:
        return [self.answers[image.tobytes()] for image in images]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())


def test_both_border_conventions_match_a_dice_computed_independently(pet_dataset: Path) -> None:
    """A model that draws the pet without its border band: perfect with the border ignored, and exactly the
    Dice of pet-only against pet-plus-border with the border counted as pet."""
    from training.data import load_pair

    samples = list_split(pet_dataset, "train")[:6]
    core_only = AnswersFromTrimaps(samples, pet_values=(1,))
    result = evaluate.evaluate(core_only, samples, border_is_pet=True, progress=False)
    assert result.border_ignored.dice == pytest.approx([1.0] * len(samples))
    expected = []
    for sample in samples:
        _, trimap = load_pair(sample)
        expected.append(dice(trimap == 1, (trimap == 1) | (trimap == 3)))
    assert result.scored.dice == pytest.approx(expected)
    assert max(expected) < 0.97  # the band matters for these photos: the test can tell the conventions apart
    with_band = AnswersFromTrimaps(samples, pet_values=(1, 3))
    as_background = evaluate.evaluate(with_band, samples, border_is_pet=False, progress=False)
    assert as_background.scored.dice == pytest.approx(expected)  # symmetric: border drawn, truth without it
    assert as_background.border_ignored.dice == pytest.approx([1.0] * len(samples))
