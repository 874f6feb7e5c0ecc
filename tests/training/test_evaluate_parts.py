"""petseg-evaluate piece by piece: the scoring loop against a model whose answers the test chooses, the pet-free
crops, the worst-image grid, the summary it prints, and what the command line hands to each of them."""
from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from models.checkpoint import load_checkpoint
from models.engine.ensemble import EnsembleSegmenter
from models.engine.segmenter import SegmenterBase
from tests.factories import make_checkpoint, make_pet_dataset
from training import evaluate
from training.copy_paste import least_pet_window
from training.data import list_split, load_pair
from training.images import trimap_to_mask
from training.metrics import SegmentationMetrics

TORCH_FP32 = ["--runtime", "torch", "--precision", "fp32", "--device", "cpu", "--compile", "off"]


class FromTrimaps(SegmenterBase):
    """Answers, for the photos of ``samples`` in order, 1.0 on the pet, ``border`` on the border band and 0.0 on
    the background; records each batch it is asked for."""

    def __init__(self, samples: list, border: float = 0.5, answers_short: bool = False) -> None:
        self.maps = [np.choose(load_pair(s)[1] - 1, [1.0, 0.0, border]).astype(np.float32) for s in samples]
        self.calls: list[tuple[int, object]] = []
        self.image_size, self.answers_short = 16, answers_short

    def predict_batch(self, images, output_sizes=None):  # noqa: ANN001, ANN201
        self.calls.append((len(images), output_sizes))
        answers, self.maps = self.maps[:len(images)], self.maps[len(images):]
        if output_sizes is not None:
            answers = [np.full(size, 0.25, np.float32) for size in output_sizes]
        return answers[:-1] if self.answers_short else answers


def dice(pred: np.ndarray, truth: np.ndarray, keep: np.ndarray | None = None) -> float:
    if keep is not None:
        pred, truth = pred[keep], truth[keep]
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2 * (pred & truth).sum() / total


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=5)


# --- the scoring loop -------------------------------------------------------------------------------------------

def test_evaluate_thresholds_strictly_and_counts_the_border_as_pet_by_default(dataset: Path) -> None:
    samples = list_split(dataset, "test")
    result = evaluate.evaluate(FromTrimaps(samples), samples, progress=False)  # border answered 0.5: not pet
    for name, scored, ignored, sample in zip(result.scored.names, result.scored.dice, result.border_ignored.dice,
                                             samples, strict=True):
        trimap = load_pair(sample)[1]
        assert name == sample.name
        assert scored == pytest.approx(dice(trimap == 1, trimap != 2))  # the border counts as pet
        assert ignored == pytest.approx(1.0)  # and nowhere else is the model wrong
    as_background = evaluate.evaluate(FromTrimaps(samples), samples, progress=False, border_is_pet=False)
    assert as_background.scored.dice == pytest.approx([1.0] * len(samples))


def test_evaluate_asks_for_batches_of_the_batch_size_and_adds_to_a_running_evaluation(dataset: Path) -> None:
    samples = list_split(dataset, "test")
    model = FromTrimaps(samples)
    running = evaluate.Evaluation.empty()
    running.scored.names.append("earlier")
    running.scored.dice.append(0.5)
    result = evaluate.evaluate(model, samples, batch_size=2, into=running, progress=False)
    assert result is running and result.scored.names[0] == "earlier" and len(result.scored.names) == 6
    assert model.calls == [(2, None), (2, None), (1, None)]


def test_evaluate_refuses_a_model_that_answers_fewer_maps_than_photos(dataset: Path) -> None:
    samples = list_split(dataset, "test")
    with pytest.raises(ValueError):
        evaluate.evaluate(FromTrimaps(samples, answers_short=True), samples, progress=False)
    with pytest.raises(ValueError):
        evaluate._probabilities(FromTrimaps(samples, answers_short=True), [np.zeros((8, 8, 3), np.uint8)] * 2,
                                "guided")


def test_the_progress_bar_names_the_split_and_counts_batches(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    samples = list_split(dataset, "test")
    evaluate.evaluate(FromTrimaps(samples), samples, label="test", batch_size=2)  # progress on by default
    bar = capsys.readouterr().err
    assert "evaluate test" in bar and "3/3" in bar and re.search(r"[\d.](batch/s|s/batch)\]", bar)
    evaluate.evaluate(FromTrimaps(samples), samples)  # no label: the bar says what it does, no more
    assert "evaluate: " in capsys.readouterr().err
    evaluate.evaluate(FromTrimaps(samples), samples, label="test", progress=False)
    assert capsys.readouterr().err == ""


def test_the_guided_refinement_predicts_at_the_models_side_then_follows_the_photo(dataset: Path) -> None:
    samples = list_split(dataset, "test")
    model = FromTrimaps(samples)
    photos = [np.zeros((10, 12, 3), np.uint8), np.zeros((6, 9, 3), np.uint8)]
    maps = evaluate._probabilities(model, photos, "guided")
    assert model.calls == [(2, [(16, 16), (16, 16)])]
    assert [m.shape for m in maps] == [(10, 12), (6, 9)]
    assert all(np.allclose(m, 0.25, atol=1e-3) for m in maps)


def test_the_report_lists_failures_under_0_7_and_the_worst_images() -> None:
    evaluation = evaluate.Evaluation.empty()
    for metrics in (evaluation.scored, evaluation.border_ignored):
        metrics.names += ["a_1", "a_2", "b_1", "b_2"]
        metrics.dice += [0.69, 0.7, 0.95, 0.2]
        metrics.iou += [0.5, 0.5, 0.9, 0.1]
    report = evaluation.report(worst=2)
    assert report["below_0.7"] == 0.5 and report["border_ignored"]["below_0.7"] == 0.5
    assert [row["name"] for row in report["worst"]] == ["b_2", "a_1"]
    assert report["per_image"] == {"a_1": 0.69, "a_2": 0.7, "b_1": 0.95, "b_2": 0.2}
    assert report["per_breed"]["a"]["below_0.7"] == 0.5
    assert len(evaluation.report()["worst"]) == 4  # ten by default, as many as there are
    evaluation.scored.dice.append(0.1)
    with pytest.raises(ValueError):  # a score without a name is a bug, not a shorter table
        evaluation.report()


# --- pet-free crops ---------------------------------------------------------------------------------------------

class Brightness(SegmenterBase):
    """Pet probability = the photo's brightness: the synthetic pets are bright, their backgrounds dark."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def predict(self, image, output_size=None):  # noqa: ANN001, ANN201
        return image.mean(axis=2).astype(np.float32) / 255 * self.scale


def test_pet_free_crops_hold_no_pet_and_their_choice_follows_the_seed(dataset: Path) -> None:
    samples = list_split(dataset, "train", fold=None)
    found = evaluate.background_false_positives(Brightness(), samples, threshold=0.5)
    assert found["crops"] > 0 and found["pet_fraction"] == 0.0  # not one bright pet pixel in any crop
    dim = Brightness(scale=255 / 40)  # the dark background's brightest noise is taken for a pet
    default = evaluate.background_false_positives(dim, samples)
    assert default == evaluate.background_false_positives(dim, samples, threshold=0.5, seed=0)
    assert default != evaluate.background_false_positives(dim, samples, seed=1)
    assert 0.0 < default["pet_fraction"] < 1.0


def test_each_photo_gives_the_window_of_sixteen_that_overlaps_the_pet_least(dataset: Path) -> None:
    samples = list_split(dataset, "train", fold=None)
    dim = Brightness(scale=255 / 40)
    rng, expected = np.random.default_rng(0), []
    for sample in samples:  # the documented rule, step by step
        image, trimap = load_pair(sample)
        x, y, w, h = least_pet_window((trimap != 2).astype(np.uint8), rng, tries=16)
        if (trimap[y:y + h, x:x + w] == 2).all():
            expected.append(float((dim.predict(image[y:y + h, x:x + w]) > 0.5).mean()))
    found = evaluate.background_false_positives(dim, samples)
    assert found["crops"] == len(expected) > 0 and found["pet_fraction"] == pytest.approx(np.mean(expected))


class TenthPet(SegmenterBase):
    """Takes exactly a tenth of any crop for a pet."""

    def predict(self, image, output_size=None):  # noqa: ANN001, ANN201
        answer = np.zeros((10, 10), np.float32)
        answer[0] = 1.0
        return answer


def test_a_crop_counts_as_a_failure_only_over_a_tenth(dataset: Path) -> None:
    found = evaluate.background_false_positives(TenthPet(), list_split(dataset, "train", fold=None))
    assert found["pet_fraction"] == pytest.approx(0.1) and found["crops_over_10pct"] == 0.0


class Constant(SegmenterBase):
    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, image, output_size=None):  # noqa: ANN001, ANN201
        return np.full(image.shape[:2], self.value, np.float32)


def test_a_probability_at_the_threshold_is_not_a_pet(dataset: Path) -> None:
    found = evaluate.background_false_positives(Constant(0.5), list_split(dataset, "train", fold=None))
    assert found["pet_fraction"] == 0.0 and found["crops_over_10pct"] == 0.0


def test_photos_that_are_all_pet_give_no_crop(tmp_path: Path) -> None:
    root = make_pet_dataset(tmp_path / "pets", n_trainval=3, n_test=1, quirks=False)
    for trimap in (root / "annotations" / "trimaps").glob("*.png"):
        Image.fromarray(np.ones(np.asarray(Image.open(trimap)).shape, np.uint8)).save(trimap)
    found = evaluate.background_false_positives(Constant(0.9), list_split(root, "train", fold=None))
    assert list(found) == ["crops", "pet_fraction", "crops_over_10pct"] and found["crops"] == 0
    assert math.isnan(found["pet_fraction"]) and math.isnan(found["crops_over_10pct"])


# --- the worst-image grid and the summary -----------------------------------------------------------------------

def test_the_worst_grid_draws_photo_truth_and_the_models_mask(dataset: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list = []
    monkeypatch.setattr(evaluate, "save_comparison_grid", lambda rows, path, title: drawn.append((rows, path, title)))
    sample = list_split(dataset, "test")[0]
    evaluate.draw_worst([(sample, 0.12345, Constant(0.5))], tmp_path / "g.png", False, "valid: worst")
    evaluate.draw_worst([(sample, 0.5, Constant(0.7))], tmp_path / "h.png", True, "pet")
    (rows, path, title), (pet_rows, _, _) = drawn
    (label, image, truth, pred), = rows
    trimap = load_pair(sample)[1]
    assert (label, path, title) == (f"{sample.name}  Dice 0.123", tmp_path / "g.png", "valid: worst")
    np.testing.assert_array_equal(truth, trimap_to_mask(trimap, False))
    np.testing.assert_array_equal(pet_rows[0][2], trimap_to_mask(trimap, True))
    assert image.shape[:2] == trimap.shape and not pred.any()  # 0.5 is not over the threshold
    assert pet_rows[0][3].all()
    evaluate.draw_worst([], tmp_path / "none.png", True, "nothing")
    assert len(drawn) == 2  # no rows, no grid


def test_the_summary_prints_each_breed_and_the_five_worst(capsys: pytest.CaptureFixture) -> None:
    breed = {"dice": 0.8, "images": 2, "below_0.7": 0.5}
    report = {"images": 2, "dice": 0.8, "dice_micro": 0.81, "iou": 0.7, "iou_micro": 0.71, "below_0.7": 0.5,
              "per_breed": {"pug": breed},
              "border_ignored": {"dice": 0.9, "below_0.7": 0.0, "per_breed": {"pug": {**breed, "dice": 0.9}}},
              "background_crops": {"crops": 3, "pet_fraction": 0.05, "crops_over_10pct": 1 / 3},
              "worst": [{"name": f"pug_{i}", "dice": i / 10} for i in range(6)]}
    evaluate._print_summary("valid", report)
    assert capsys.readouterr().out.splitlines() == [
        "valid: 2 images  Dice 0.8000 (micro 0.8100)  IoU 0.7000 (micro 0.7100)  under 0.7: 50.0%",
        "  border ignored: Dice 0.9000  under 0.7: 0.0%",
        "  pet-free crops: 3, taken for a pet: 5.0% of their pixels, 33.3% of them over 10%",
        "  pug: Dice 0.8000 over 2 images, under 0.7: 50.0%; border ignored 0.9000",
        *(f"  worst: pug_{i}  Dice {i / 10:.3f}" for i in range(5)),
    ]


def test_the_report_file_is_indented_json(tmp_path: Path) -> None:
    evaluate.write_report(tmp_path / "r.json", {"dice": 0.5, "per_breed": {"pug": 1}})
    assert (tmp_path / "r.json").read_text() == '{\n "dice": 0.5,\n "per_breed": {\n  "pug": 1\n }\n}'


# --- label PNGs against trimaps ---------------------------------------------------------------------------------

def write_labels(folder: Path, samples: list, skip: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(samples):
        if i != skip:
            trimap = load_pair(sample)[1]
            Image.fromarray(np.where(trimap == 1, 255, 0).astype(np.uint8)).save(folder / f"{sample.name}.png")
    return folder


def test_labels_are_scored_border_as_pet_by_default_and_a_missing_one_is_skipped(dataset: Path,
                                                                                 tmp_path: Path) -> None:
    samples = list_split(dataset, "test")
    labels = write_labels(tmp_path / "labels", samples, skip=0)
    result = evaluate.evaluate_labels(samples, labels)
    assert result.scored.names == [s.name for s in samples[1:]]
    trimap = load_pair(samples[1])[1]
    assert result.scored.dice[0] == pytest.approx(dice(trimap == 1, trimap != 2))
    assert result.border_ignored.dice == pytest.approx([1.0] * 4)  # the labels miss only the border band
    assert evaluate.evaluate_labels(samples, labels, border_is_pet=False).scored.dice == pytest.approx([1.0] * 4)


def test_a_label_of_another_size_is_named_with_both_sizes(dataset: Path, tmp_path: Path) -> None:
    sample = list_split(dataset, "test")[0]
    height, width = load_pair(sample)[1].shape
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((height + 1, width + 3), np.uint8)).save(tmp_path / "labels" / f"{sample.name}.png")
    with pytest.raises(ValueError) as info:
        evaluate.evaluate_labels([sample], tmp_path / "labels")
    assert str(info.value) == (f"{tmp_path / 'labels' / sample.name}.png is {width + 3}x{height + 1}, "
                               f"its photo {width}x{height}")


def test_the_label_report_names_its_folder_split_fold_and_teacher(dataset: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    samples = list_split(dataset, "valid", 5, 2)
    labels = write_labels(tmp_path / "labels", list_split(dataset, "train", fold=None))
    (labels / "teacher.json").write_text(json.dumps({"teacher": {"onnx": "isnet.onnx"}, "other": 1}))
    monkeypatch.chdir(tmp_path)
    assert evaluate.main(["--labels", str(labels), "--data_path", str(dataset), "--split", "valid", "--folds", "5",
                          "--fold", "2", "--border", "background"]) == 0
    report = json.loads((tmp_path / "eval_labels_valid.json").read_text())
    assert sorted(report["per_image"]) == sorted(s.name for s in samples)
    assert (report["labels"], report["split"], report["data_path"]) == (str(labels), "valid", str(dataset))
    assert report["border_is_pet"] is False and report["dice"] == pytest.approx(1.0)
    assert report["teacher"] == {"onnx": "isnet.onnx"}
    assert capsys.readouterr().out.startswith(f"valid: {len(samples)} images  Dice 1.0000")
    assert evaluate.main(["--labels", str(labels), "--data_path", str(dataset), "--split", "valid",
                          "--holdout-breed", "Abyssinian", "--worst", "1", "--out", "abyssinian.json"]) == 0
    report = json.loads((tmp_path / "abyssinian.json").read_text())
    assert sorted(report["per_image"]) == sorted(s.name for s in list_split(dataset, "valid", holdout_breed="Abyssinian"))
    assert report["border_is_pet"] is True and report["dice"] < 0.99 and len(report["worst"]) == 1
    assert evaluate.main(["--labels", str(labels), "--data_path", str(dataset), "--split", "valid"]) == 2
    assert f"{tmp_path / 'eval_labels_valid.json'} exists: pass --overwrite to replace it, or another --out" in \
        capsys.readouterr().err
    assert evaluate.main(["--labels", str(labels), "--data_path", str(dataset), "--split", "valid",
                          "--overwrite"]) == 0


def test_labels_that_are_no_folder_or_cover_no_photo_are_refused(dataset: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    args = ["--data_path", str(dataset), "--split", "test", "--out", str(tmp_path / "r.json")]
    assert evaluate.main(["--labels", str(tmp_path / "nowhere"), *args]) == 2
    assert f"--labels {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate.main(["--labels", str(tmp_path / "empty"), *args]) == 2
    assert f"no photo of the test split has a label in {tmp_path / 'empty'}" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


# --- the command line -------------------------------------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "tiny.pt", image_size=64)


def test_a_model_run_reports_how_it_was_scored(dataset: Path, checkpoint: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: a progress bar
    flags = ["--model", str(checkpoint), "--data_path", str(dataset), "--split", "valid", "--folds", "5", "--fold",
             "2", "--threshold", "0.4", "--border", "background", "--min-blob-ratio", "0.2", "--worst", "1",
             *TORCH_FP32]
    assert evaluate.main(flags) == 0
    report = json.loads((tmp_path / "eval_valid.json").read_text())
    samples = list_split(dataset, "valid", 5, 2)
    facts = {key: report[key] for key in ("checkpoint", "arch", "split", "data_path", "threshold", "border_is_pet",
                                          "runtime", "precision", "refine", "min_blob_ratio", "ensemble")}
    assert facts == {"checkpoint": str(checkpoint), "arch": load_checkpoint(checkpoint).arch, "split": "valid",
                     "data_path": str(dataset), "threshold": 0.4, "border_is_pet": False, "runtime": "torch",
                     "precision": "fp32", "refine": "none", "min_blob_ratio": 0.2, "ensemble": []}
    assert sorted(report["per_image"]) == sorted(s.name for s in samples) and len(report["worst"]) == 1
    segmenter = evaluate.open_engine(evaluate.build_parser().parse_args(
        ["--model", str(checkpoint), "--threshold", "0.4", "--min-blob-ratio", "0.2", *TORCH_FP32]), checkpoint, 2)
    again = evaluate.evaluate(segmenter, samples, threshold=0.4, border_is_pet=False, progress=False)
    assert report["per_image"] == dict(zip(again.scored.names, again.scored.dice, strict=True))
    printed = capsys.readouterr()
    assert printed.out.startswith(f"valid: {len(samples)} images  Dice {report['dice']:.4f}")
    assert "evaluate valid" in printed.err
    assert evaluate.main(flags) == 2  # the report is there: refused before any work
    assert f"{tmp_path / 'eval_valid.json'} exists: pass --overwrite" in capsys.readouterr().err
    assert evaluate.main([*flags, "--overwrite"]) == 0


def test_the_command_line_hands_each_flag_to_the_scoring(dataset: Path, checkpoint: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    calls: dict[str, tuple] = {}

    def spy(name: str):  # noqa: ANN202 - records the call, then does the real work
        real = getattr(evaluate, name)

        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[name] = (args, kwargs)
            return real(*args, **kwargs)
        return call

    for name in ("evaluate", "background_false_positives", "draw_worst"):
        monkeypatch.setattr(evaluate, name, spy(name))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    out = tmp_path / "r.json"
    with caplog.at_level(logging.INFO, logger="training.evaluate"):
        assert evaluate.main(["--model", str(checkpoint), "--data_path", str(dataset), "--split", "test",
                              "--batch-size", "3", "--threshold", "0.45", "--border", "pet", "--refine", "guided",
                              "--background-crops", "--worst", "2", "--worst-grid", str(tmp_path / "w.png"),
                              "--out", str(out), *TORCH_FP32]) == 0
    assert f"report written to {out}" in caplog.messages
    _, scoring = calls["evaluate"]
    assert scoring == {"batch_size": 3, "threshold": 0.45, "border_is_pet": True, "progress": True, "label": "test",
                       "refine": "guided"}
    assert calls["background_false_positives"][1] == {"threshold": 0.45}
    (rows, path, border), titles = calls["draw_worst"]
    assert (len(rows), path, border, titles) == (2, tmp_path / "w.png", True, {"title": "test: the 2 worst images"})


def test_the_border_follows_the_checkpoint_unless_told(dataset: Path, checkpoint: Path, tmp_path: Path) -> None:
    border = load_checkpoint(checkpoint).border_is_pet
    for flag, expected in (("checkpoint", border), ("pet", True), ("background", False)):
        out = tmp_path / f"{flag}.json"
        assert evaluate.main(["--model", str(checkpoint), "--data_path", str(dataset), "--limit", "2",
                              "--border", flag, "--out", str(out), *TORCH_FP32]) == 0
        report = json.loads(out.read_text())
        assert report["border_is_pet"] is expected and report["images"] == 2


def test_an_ensemble_averages_both_models_and_names_its_report(dataset: Path, checkpoint: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_checkpoint(tmp_path / "other.pt", image_size=64, seed=3)
    args = evaluate.build_parser().parse_args(["--model", str(checkpoint), "--min-blob-ratio", "0", *TORCH_FP32])
    pair = EnsembleSegmenter([evaluate.open_engine(args, checkpoint, 5), evaluate.open_engine(args, other, 5)])
    alone = evaluate.open_engine(args, checkpoint, 5)
    samples = list_split(dataset, "test")
    threshold = float(np.median(pair.predict(load_pair(samples[0])[0])))  # where the two models disagree
    averaged = evaluate.evaluate(pair, samples, threshold=threshold, progress=False).scored.dice
    assert averaged != pytest.approx(evaluate.evaluate(alone, samples, threshold=threshold, progress=False).scored.dice)
    monkeypatch.chdir(tmp_path)
    assert evaluate.main(["--model", str(checkpoint), "--ensemble", str(other), "--data_path", str(dataset),
                          "--split", "test", "--threshold", str(threshold), "--min-blob-ratio", "0", *TORCH_FP32]) == 0
    report = json.loads((tmp_path / "eval_test_ensemble.json").read_text())
    assert report["ensemble"] == [str(other)]
    assert list(report["per_image"].values()) == pytest.approx(averaged)


def test_the_engine_is_warmed_for_the_batches_it_will_run(dataset: Path, checkpoint: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    warmed: list = []
    engine_class = type(evaluate.open_engine(evaluate.build_parser().parse_args(TORCH_FP32), checkpoint, 1))
    monkeypatch.setattr(engine_class, "warmup", lambda self, sizes=(1,): warmed.append(tuple(sizes)) or 0.0)
    for limit, batch, expected in (("3", "8", (3,)), ("5", "2", (2,))):
        assert evaluate.main(["--model", str(checkpoint), "--data_path", str(dataset), "--limit", limit,
                              "--batch-size", batch, "--out", str(tmp_path / f"{limit}.json"), *TORCH_FP32]) == 0
        assert warmed.pop() == expected
    assert evaluate.main(["--model", str(checkpoint), "--data_path", str(dataset), "--limit", "1",
                          "--out", str(tmp_path / "1.json"), *TORCH_FP32]) == 0
    assert warmed.pop() == (1,)  # one photo: a batch of one


def test_a_held_out_breed_is_scored_alone(dataset: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "breed.json"
    assert evaluate.main(["--model", str(checkpoint), "--data_path", str(dataset), "--split", "valid",
                          "--holdout-breed", "Abyssinian", "--out", str(out), "--runtime", "torch", "--precision",
                          "fp32", "--device", "cpu", "--compile", "auto"]) == 0  # auto: too few photos to compile
    report = json.loads(out.read_text())
    assert sorted(report["per_image"]) == sorted(s.name for s in list_split(dataset, "valid",
                                                                            holdout_breed="Abyssinian"))


def test_a_checkpoint_of_another_architecture_than_net_says_is_refused(dataset: Path, checkpoint: Path,
                                                                        tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    arch = load_checkpoint(checkpoint).arch
    other = "unet" if arch.lower() != "unet" else "resnet34_unet"
    assert evaluate.main(["--model", str(checkpoint), "--net", other, "--data_path", str(dataset),
                          "--out", str(tmp_path / "r.json"), *TORCH_FP32]) == 2
    assert arch in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    assert evaluate.main(["--model", str(checkpoint), "--net", arch, "--data_path", str(dataset),
                          "--out", str(tmp_path / "r.json"), *TORCH_FP32]) == 0


def test_model_and_labels_go_one_at_a_time(dataset: Path, checkpoint: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    for args in ([], ["--model", str(checkpoint), "--labels", str(tmp_path)]):
        with pytest.raises(SystemExit) as info:
            evaluate.main(args)
        assert info.value.code == 2
        assert "error: give --model CKPT (a model to evaluate) or --labels DIR (label PNGs to score), one of them\n" \
            in capsys.readouterr().err


def test_against_the_teacher_hands_its_settings_on_and_reports_them(tmp_path: Path, checkpoint: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import training.teacher_agreement as agreement

    images, labels = tmp_path / "photos", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(40):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / f"{'pug' if i % 2 else 'Sphynx'}_{i}.png")
    from training.pseudo_data import held_out_names

    names = held_out_names(labels, 4)
    calls: dict = {}
    engine = SimpleNamespace(name="engine")
    monkeypatch.setattr(evaluate, "open_engine",
                        lambda args, model, count: calls.update(open=(args.threshold, model, count)) or engine)

    def score(segmenter, images_, labels_, names_, *, threshold, edge_band, progress):  # noqa: ANN001, ANN202
        calls["score"] = (segmenter, images_, labels_, names_, threshold, edge_band, progress)
        metrics = SegmentationMetrics()
        metrics.names += names_
        metrics.dice += [0.5 if n.startswith("pug") else 0.9 for n in names_]  # by name, Sphynx sorts first
        metrics.iou += [0.8] * len(names_)
        return metrics

    monkeypatch.setattr(agreement, "score_against_teacher", score)
    monkeypatch.setattr(agreement, "worst_per_breed_grid", lambda *args: calls.update(grid=args))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: progress bars on
    with caplog.at_level(logging.INFO, logger="training.evaluate"):
        assert evaluate.main(["--model", str(checkpoint), "--teacher-images", str(images), "--teacher-labels",
                              str(labels), "--teacher-holdout", "4", "--threshold", "0.3", "--edge-band", "3",
                              "--worst", "2", "--worst-grid", "grid.png"]) == 0
    assert f"report written to {tmp_path / 'eval_teacher.json'}" in caplog.messages
    assert calls["open"] == (0.3, str(checkpoint), len(names))
    assert calls["score"] == (engine, images, labels, names, 0.3, 3, True)
    assert calls["grid"][0] is engine and calls["grid"][2:] == (images, labels, Path("grid.png"), 0.3)
    assert calls["grid"][1].names == names
    report = json.loads((tmp_path / "eval_teacher.json").read_text())
    assert {key: report[key] for key in ("checkpoint", "teacher_labels", "teacher_holdout", "edge_band",
                                         "threshold", "images")} == {
        "checkpoint": str(checkpoint), "teacher_labels": str(labels), "teacher_holdout": 4, "edge_band": 3,
        "threshold": 0.3, "images": len(names)}
    share_pug = sum(n.startswith("pug") for n in names) / len(names)
    assert report["below_0.7"] == pytest.approx(share_pug) and len(report["worst"]) == 2
    assert report["per_image"] == {n: (0.5 if n.startswith("pug") else 0.9) for n in names}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"against the teacher on {len(names)} held-out photos: Dice {report['dice']:.4f}  "
                        f"under 0.7: {share_pug:.1%}")
    assert lines[1].startswith("  pug: Dice 0.5000 over") and lines[2].startswith("  Sphynx: Dice 0.9000 over")
    assert evaluate.main(["--model", str(checkpoint), "--teacher-images", str(images), "--teacher-labels",
                          str(labels), "--teacher-holdout", "4", "--limit", "1", "--out", "one.json"]) == 0
    assert json.loads((tmp_path / "one.json").read_text())["images"] == 1


def test_against_the_teacher_without_a_held_out_label_is_refused(tmp_path: Path, checkpoint: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "labels").mkdir()
    assert evaluate.main(["--model", str(checkpoint), "--teacher-images", str(tmp_path), "--teacher-labels",
                          str(tmp_path / "labels"), "--teacher-holdout", "7", "--out", str(tmp_path / "r.json")]) == 2
    assert f"no held-out photo (1 in 7) has a label in {tmp_path / 'labels'}" in capsys.readouterr().err
    assert evaluate.main(["--model", str(checkpoint), "--teacher-images", str(tmp_path)]) == 2
    assert "error: --teacher-images and --teacher-labels go together\n" in capsys.readouterr().err
