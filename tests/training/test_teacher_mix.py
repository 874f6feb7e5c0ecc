"""Training on labelled + teacher-labelled photos: targets from soft labels, each source's loss, the held-out
share, and a run of petseg-train on the mix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.factories import blob_image
from tests.training._runs import train
from training.images import MASK_IGNORE
from training.losses import BCEDiceLoss, loss_by_source
from training.pseudo_data import (
    SOURCE_TEACHER,
    TeacherLabelledDataset,
    grow_soft_label,
    is_teacher_holdout,
    soft_to_target,
)


def test_confident_pixels_become_targets_and_unsure_ones_are_left_out() -> None:
    prob = np.array([[0.0, 0.05, 0.3, 0.5, 0.7, 0.95, 1.0]], np.float32)
    assert soft_to_target(prob, 0.9, edge_band=0).tolist() == [[0, 0, MASK_IGNORE, MASK_IGNORE, MASK_IGNORE, 1, 1]]
    assert soft_to_target(prob, 0.5, edge_band=0).tolist() == [[0, 0, 0, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="confidence"):
        soft_to_target(prob, 0.3, edge_band=0)


def test_a_band_along_the_teachers_outline_is_left_out_on_both_sides() -> None:
    prob = np.zeros((1, 21), np.float32)
    prob[0, 10:] = 1.0  # the outline lies between columns 9 and 10
    target = soft_to_target(prob, 0.9, edge_band=2)[0]
    assert target[:8].tolist() == [0] * 8 and target[12:].tolist() == [1] * 9
    assert set(target[8:12].tolist()) == {MASK_IGNORE}


def test_growing_moves_every_level_of_the_teachers_label_out_by_a_share_of_the_side() -> None:
    yy, xx = np.mgrid[:100, :60]
    distance = np.hypot(yy - 50, xx - 30)
    prob = np.clip(1.0 - (distance - 10) / 4, 0, 1).astype(np.float32)  # 1 inside r=10, 0 outside r=14
    grown = grow_soft_label(prob, 0.03)  # 0.03 of the long side (100): 3 px
    for level in (0.25, 0.5, 0.75):
        radius = np.sqrt((prob >= level).sum() / np.pi)
        assert np.sqrt((grown >= level).sum() / np.pi) == pytest.approx(radius + 3, abs=0.3)
    assert grown.min() == 0.0 and grown.max() == 1.0 and grown.dtype == np.float32
    assert grow_soft_label(prob, 0.0) is prob
    assert grow_soft_label(prob, 0.004) is prob  # under half a pixel: nothing to grow


def test_the_dataset_grows_the_teachers_pet_when_asked(tmp_path: Path) -> None:
    images, labels = write_teacher_set(tmp_path, count=2)
    plain = TeacherLabelledDataset(images, labels, image_size=48, edge_band=0, progress=False)
    grown = TeacherLabelledDataset(images, labels, image_size=48, edge_band=0, grow=0.05, progress=False)
    for index in range(2):
        before, after = plain[index]["mask"] == 1, grown[index]["mask"] == 1
        assert bool((after | ~before).all()) and int(after.sum()) > int(before.sum())


def test_each_source_counts_per_image_and_its_weight_scales_it() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 8, 8)
    target = (torch.rand(4, 1, 8, 8) > 0.5).float()
    sources = torch.tensor([0, 1, 1, 0])
    criterion = BCEDiceLoss()
    even, parts = loss_by_source(criterion, logits, target, sources, {})
    labelled, teacher = criterion(logits[[0, 3]], target[[0, 3]]), criterion(logits[[1, 2]], target[[1, 2]])
    assert float(even) == pytest.approx(float(labelled + teacher) / 2, rel=1e-5)
    assert parts[0] == (pytest.approx(float(labelled)), 2) and parts[1] == (pytest.approx(float(teacher)), 2)
    only_labelled, _ = loss_by_source(criterion, logits, target, sources, {SOURCE_TEACHER: 0.0})
    assert float(only_labelled) == pytest.approx(float(labelled), rel=1e-5)
    heavy, _ = loss_by_source(criterion, logits, target, sources, {SOURCE_TEACHER: 3.0})
    assert float(heavy) == pytest.approx(float(labelled + 3 * teacher) / 4, rel=1e-5)


def write_teacher_set(root: Path, count: int = 12, labelled: int | None = None) -> tuple[Path, Path]:
    """``count`` blob photos; the first ``labelled`` of them (all by default) with a soft label PNG."""
    images, labels = root / "photos", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for i in range(count):
        image, trimap = blob_image(56, 48, seed=100 + i)
        name = f"{'pug' if i % 2 else 'Sphynx'}_{i}"
        Image.fromarray(image).save(images / f"{name}.jpg", quality=95)
        if labelled is None or i < labelled:
            soft = np.where(trimap == 2, 10, 245).astype(np.uint8)
            Image.fromarray(soft).save(labels / f"{name}.png")
    (labels / "teacher.json").write_text(json.dumps({"teacher": {"kind": "test"}}))
    return images, labels


def test_photos_without_a_label_are_left_out_and_samples_say_their_source(tmp_path: Path) -> None:
    images, labels = write_teacher_set(tmp_path, count=6, labelled=4)
    (labels / "Sphynx_2.png").write_bytes(b"broken")
    data = TeacherLabelledDataset(images, labels, image_size=32, progress=False)
    assert len(data) == 3 and data.names == ["Sphynx_0", "pug_1", "pug_3"] and len(data.skipped) == 1
    sample = data[0]
    assert sample["source"] == SOURCE_TEACHER and sample["image"].shape == (3, 32, 32)
    mask = sample["mask"][0]
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0, float(MASK_IGNORE)}
    only = TeacherLabelledDataset(images, labels, image_size=32, names={"pug_3"}, progress=False)
    assert only.names == ["pug_3"]


def test_the_held_out_share_is_stable_and_about_one_in_n() -> None:
    names = [f"beagle_{i}" for i in range(2000)]
    held = [n for n in names if is_teacher_holdout(n, 20)]
    assert 60 < len(held) < 140
    assert held == [n for n in names if is_teacher_holdout(n, 20)]
    assert not any(is_teacher_holdout(n, 0) for n in names)


@pytest.mark.slow
def test_a_run_on_the_mix_logs_each_sources_loss_and_never_trains_on_the_held_out_photos(
        pets30: Path, module_tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = write_teacher_set(module_tmp_path / "teacher", count=40)
    seen: list[str] = []
    original = TeacherLabelledDataset.__init__

    grows: list[object] = []

    def spy(self: TeacherLabelledDataset, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.extend(self.names)
        grows.append(kwargs["grow"])

    monkeypatch.setattr(TeacherLabelledDataset, "__init__", spy)
    out = module_tmp_path / "run"
    assert train(pets30, out, "-n", "unet", "-e", "1", "--teacher-images", str(images), "--teacher-labels",
                 str(labels), "--teacher-holdout", "4", "--labelled-repeat", "2", "--augment", "strong",
                 "--teacher-grow", "0.01") == 0
    assert grows == [0.01]
    history = json.loads((out / "history.json").read_text())
    assert len(history["train_loss_labelled"]) == 1 and len(history["train_loss_teacher"]) == 1
    assert history["train_loss_teacher"][0] > 0
    held = {f"{'pug' if i % 2 else 'Sphynx'}_{i}" for i in range(40)}
    held = {n for n in held if is_teacher_holdout(n, 4)}
    assert held and len(seen) == 40 - len(held) and not held & set(seen)
    from models.checkpoint import load_checkpoint

    config = load_checkpoint(out / "last.pt").config
    assert config["teacher_labels"] == str(labels) and config["labelled_repeat"] == 2
    assert config["teacher_grow"] == 0.01


def test_teacher_images_without_labels_or_copy_paste_on_the_mix_are_refused(
        pets30: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train(pets30, tmp_path / "a", "--teacher-images", str(tmp_path))
    assert exc.value.code == 2 and "go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        train(pets30, tmp_path / "b", "--teacher-images", str(tmp_path), "--teacher-labels", str(tmp_path),
              "--augment", "copy-paste")
    assert exc.value.code == 2 and "copy-paste" in capsys.readouterr().err
    for share in ("-0.01", "0.2"):
        with pytest.raises(SystemExit) as exc:
            train(pets30, tmp_path / "c", "--teacher-images", str(tmp_path), "--teacher-labels", str(tmp_path),
                  "--teacher-grow", share)
        assert exc.value.code == 2 and "--teacher-grow must be in [0, 0.05]" in capsys.readouterr().err


class OutlineOf:
    """A stand-in model whose mask is the blob photo's bright ellipse, optionally cut short on the right."""

    def __init__(self, cut_columns: int = 0) -> None:
        self.cut_columns = cut_columns

    def predict(self, image: np.ndarray) -> np.ndarray:
        prob = (image.mean(axis=2) > 120).astype(np.float32)
        if self.cut_columns:
            prob[:, -self.cut_columns:] = 0.0
        return prob


def test_agreement_with_the_teacher_is_scored_on_held_out_photos_with_the_outline_band_left_out(
        tmp_path: Path) -> None:
    from training.pseudo_data import held_out_names
    from training.teacher_agreement import outline_band, score_against_teacher, worst_per_breed_grid

    images, labels = write_teacher_set(tmp_path, count=12)
    names = held_out_names(labels, 3)
    assert names and all(is_teacher_holdout(n, 3) for n in names)
    same = score_against_teacher(OutlineOf(), images, labels, names, edge_band=2, progress=False)
    assert same.names == names and min(same.dice) > 0.97  # the teacher's mask is that ellipse
    cut = score_against_teacher(OutlineOf(cut_columns=30), images, labels, names, edge_band=0, progress=False)
    name = names[0]
    teacher = np.asarray(Image.open(labels / f"{name}.png")) >= 128
    pred = OutlineOf(30).predict(np.asarray(Image.open(images / f"{name}.jpg").convert("RGB"))) > 0.5
    expected = 2 * (teacher & pred).sum() / (teacher.sum() + pred.sum())
    assert cut.dice[0] == pytest.approx(expected, abs=0.02) and cut.dice[0] < 0.9
    band = outline_band(np.pad(np.ones((6, 6), bool), 4), 1)  # the square spans rows and columns 4..9
    assert band[4, 6] and band[3, 6] and band[9, 6] and band[10, 6]  # its edge rows, inside and out
    assert not band[6, 6] and not band[2, 6] and not band[0, 0]  # its middle, and farther out
    assert not outline_band(np.ones((5, 5), bool), 0).any()
    grid = worst_per_breed_grid(OutlineOf(30), cut, images, labels, tmp_path / "grid.png")
    assert Image.open(grid).size[1] > 200


def test_petseg_evaluate_scores_a_checkpoint_against_the_teacher_per_breed(
        tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.evaluate import main as evaluate
    from training.pseudo_data import held_out_names

    images, labels = write_teacher_set(tmp_path, count=12)
    out = tmp_path / "report.json"
    assert evaluate(["--model", str(tiny_checkpoint), "--runtime", "torch", "--teacher-images", str(images),
                     "--teacher-labels", str(labels), "--teacher-holdout", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert sorted(report["per_image"]) == held_out_names(labels, 3)
    assert set(report["per_breed"]) <= {"pug", "Sphynx"} and report["teacher_holdout"] == 3
    assert "against the teacher on" in capsys.readouterr().out
    assert evaluate(["--model", str(tiny_checkpoint), "--teacher-labels", str(labels)]) == 2
    assert "go together" in capsys.readouterr().err
