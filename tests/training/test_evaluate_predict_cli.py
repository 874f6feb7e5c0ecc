"""evaluate and predict from the command line, on the synthetic dataset with a small real checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import evaluate, predict
from training.data import list_split

CPU = ["--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def report(pet_dataset: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("eval") / "report.json"
    code = evaluate.main(
        [
            "--model",
            str(tiny_checkpoint),
            "--data_path",
            str(pet_dataset),
            "--split",
            "test",
            "--out",
            str(out),
            "--worst",
            "3",
            *CPU,
        ]
    )
    assert code == 0
    return json.loads(out.read_text())


def test_evaluate_report_has_pooled_and_mean_scores(report: dict) -> None:
    assert report["images"] == 4 and report["split"] == "test" and report["arch"] == "resnet34_unet"
    for key in ("dice", "iou", "dice_micro", "iou_micro"):
        assert 0.0 <= report[key] <= 1.0, key


def test_evaluate_report_scores_every_image_of_the_split(report: dict, pet_dataset: Path) -> None:
    assert sorted(report["per_image"]) == sorted(s.name for s in list_split(pet_dataset, "test"))
    assert report["dice"] == pytest.approx(np.mean(list(report["per_image"].values())))


def test_evaluate_report_lists_the_worst_images_first(report: dict) -> None:
    assert len(report["worst"]) == 3
    assert [row["dice"] for row in report["worst"]] == sorted(report["per_image"].values())[:3]
    assert all(report["per_image"][row["name"]] == row["dice"] for row in report["worst"])


def test_evaluate_missing_checkpoint_is_exit_2(
    pet_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate.main(["--model", str(tmp_path / "none.pt"), "--data_path", str(pet_dataset)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def photos(pet_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three images of different sizes: the grayscale JPEG, the RGBA PNG named .jpg and the CMYK JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    names = [s.name for s in list_split(pet_dataset, "train")[:3]]  # trainval lines 1..3: the quirky ones
    for name in names:
        shutil.copy(pet_dataset / "images" / f"{name}.jpg", folder / f"{name}.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def predicted(photos: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("masks")
    assert (
        predict.main(["--model", str(tiny_checkpoint), str(photos), "--out", str(out), "--overlay", *CPU])
        == 0
    )
    return out


def test_predict_writes_one_mask_per_image(photos: Path, predicted: Path) -> None:
    expected = sorted(f"{p.stem}_{kind}.png" for p in photos.glob("*.jpg") for kind in ("mask", "overlay"))
    assert sorted(p.name for p in predicted.iterdir()) == expected


def test_predict_masks_have_each_images_original_size(photos: Path, predicted: Path) -> None:
    sizes = set()
    for image_path in photos.glob("*.jpg"):
        with Image.open(image_path) as image, Image.open(predicted / f"{image_path.stem}_mask.png") as mask:
            assert mask.size == image.size
            sizes.add(image.size)
    assert len(sizes) == 3  # the sizes really differ


def test_predict_masks_are_0_or_255(photos: Path, predicted: Path) -> None:
    for image_path in photos.glob("*.jpg"):
        with Image.open(predicted / f"{image_path.stem}_mask.png") as mask:
            assert mask.mode == "L"
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def test_predict_overlays_are_rgb_at_the_original_size(photos: Path, predicted: Path) -> None:
    for image_path in photos.glob("*.jpg"):
        with (
            Image.open(image_path) as image,
            Image.open(predicted / f"{image_path.stem}_overlay.png") as overlay,
        ):
            assert overlay.mode == "RGB" and overlay.size == image.size


def test_predict_a_split_with_a_comparison_grid(
    pet_dataset: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.png"
    assert (
        predict.main(
            [
                "--model",
                str(tiny_checkpoint),
                "--data_path",
                str(pet_dataset),
                "--split",
                "valid",
                "--out",
                str(tmp_path / "m"),
                "--grid",
                str(grid),
                *CPU,
            ]
        )
        == 0
    )
    with Image.open(grid) as image:
        image.verify()
        assert image.format == "PNG"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        f"{s.name}_mask.png" for s in list_split(pet_dataset, "valid")
    )


def test_predict_missing_input_is_exit_2(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert predict.main(["--model", str(tiny_checkpoint), str(tmp_path / "nope.jpg"), *CPU]) == 2
    err = capsys.readouterr().err
    assert "input not found" in err and "nope.jpg" in err


def test_predict_with_a_model_it_cannot_load_leaves_no_empty_folder(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    out = tmp_path / "masks"
    assert predict.main(["--model", str(broken), str(photos), "--out", str(out), *CPU]) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert not out.exists()


def test_predict_without_inputs_or_split_is_exit_2(tiny_checkpoint: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--model", str(tiny_checkpoint)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 3)])
def test_save_png_writes_the_very_pixels(shape: tuple[int, ...], tmp_path: Path) -> None:
    pixels = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "out.png"
    predict.save_png(pixels, path)
    with Image.open(path) as written:
        assert written.mode == ("L" if len(shape) == 2 else "RGB")
        np.testing.assert_array_equal(np.asarray(written), pixels)


def test_the_report_goes_to_the_working_directory_not_beside_the_checkpoint(
        pet_dataset: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "test", *CPU]
    assert evaluate.main(argv) == 0
    assert (tmp_path / "eval_test.json").is_file()
    assert not (tiny_checkpoint.parent / "eval_test.json").exists()


def test_an_existing_report_or_an_unwritable_path_is_refused_before_any_work(
        pet_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    missing_model = str(tmp_path / "not-a-checkpoint.pt")  # the report is checked before the model is opened
    argv = ["--model", missing_model, "--data_path", str(pet_dataset), *CPU]
    assert evaluate.main([*argv, "--out", str(existing)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err and existing.read_text() == "{}"
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert evaluate.main([*argv, "--out", str(a_file / "sub" / "r.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert evaluate.main([*argv, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert evaluate.main([*argv, "--out", str(existing), "--overwrite"]) == 2  # now it is the model that is missing
    assert "not-a-checkpoint.pt" in capsys.readouterr().err


def test_label_pngs_are_scored_against_the_trimaps_under_both_border_conventions(
        pet_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A teacher's quality on labelled photos: labels that are the trimap's pet alone score 1 with the border
    ignored and below 1 with the border counted as pet; photos without a label are left out."""
    import numpy as np
    from PIL import Image

    from training.data import list_split, load_pair

    labels = tmp_path / "labels"
    labels.mkdir()
    samples = list_split(pet_dataset, "train")
    for sample in samples[:5]:
        _, trimap = load_pair(sample)
        Image.fromarray(np.where(trimap == 1, 255, 0).astype(np.uint8)).save(labels / f"{sample.name}.png")
    out = tmp_path / "labels.json"
    assert evaluate.main(["--labels", str(labels), "--data_path", str(pet_dataset), "--split", "train",
                          "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert sorted(report["per_image"]) == sorted(s.name for s in samples[:5])
    assert report["border_ignored"]["dice"] == pytest.approx(1.0)
    assert report["dice"] < 0.95
    assert evaluate.main(["--labels", str(labels), "--data_path", str(pet_dataset), "--split", "test",
                          "--out", str(tmp_path / "none.json")]) == 2
    assert "no photo of the test split has a label" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--labels", str(labels), "--model", "m.pt"])


def test_evaluate_takes_the_embedded_model_by_name_as_predict_does(pet_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert evaluate.main(["--model", "default", "--data_path", str(pet_dataset), "--split", "test", "--limit", "2",
                          "--out", str(out), *CPU]) == 0
    assert json.loads(out.read_text())["checkpoint"].endswith("weights/default.pt")
