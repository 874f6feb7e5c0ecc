"""Reading the official layout: splits, quirky images, trimap rules, bad files, aligned augmentation."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.factories import make_pet_dataset
from training.data import PetDataset, list_split, load_sample
from training.images import DatasetFileError, read_rgb, trimap_to_mask
from training.transforms import build_transform


def test_splits_follow_the_starter_code_convention(pet_dataset: Path) -> None:
    names = [line.split()[0] for line in (pet_dataset / "annotations/trainval.txt").read_text().splitlines()]
    train = [s.name for s in list_split(pet_dataset, "train")]
    valid = [s.name for s in list_split(pet_dataset, "valid")]
    assert valid == names[::10]
    assert train == [n for i, n in enumerate(names) if i % 10]
    assert len(list_split(pet_dataset, "test")) == 4


def test_split_files_skip_comment_lines(tmp_path: Path, pet_dataset: Path) -> None:
    root = tmp_path / "pets"
    shutil.copytree(pet_dataset, root)
    split = root / "annotations/test.txt"
    split.write_text("#Image CLASS-ID SPECIES BREED ID\n# comment\n" + split.read_text())
    assert len(list_split(root, "test")) == 4


@pytest.mark.parametrize(("index", "fmt", "mode"), [(1, "JPEG", "L"), (2, "PNG", "RGBA"), (3, "JPEG", "CMYK")],
                         ids=["grayscale", "png-under-jpg-name-rgba", "cmyk"])
def test_quirky_images_load_as_rgb(pet_dataset: Path, index: int, fmt: str, mode: str) -> None:
    from PIL import Image

    name = (pet_dataset / "annotations/trainval.txt").read_text().splitlines()[index].split()[0]
    path = pet_dataset / "images" / f"{name}.jpg"
    with Image.open(path) as raw:
        assert (raw.format, raw.mode) == (fmt, mode)  # the quirk is really there
    image = read_rgb(path)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8


def test_trimap_border_rule() -> None:
    trimap = np.array([[1, 2, 3]], dtype=np.uint8)
    assert trimap_to_mask(trimap, border_is_pet=True).tolist() == [[1, 0, 1]]
    assert trimap_to_mask(trimap, border_is_pet=False).tolist() == [[1, 0, 0]]


def test_missing_image_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=1)
    victim = list_split(root, "train")[0].image_path
    victim.unlink()
    with pytest.raises(DatasetFileError, match=victim.name):
        PetDataset(root, "train", image_size=32, progress=False)


def test_trimap_of_the_wrong_size_names_both_files(tmp_path: Path) -> None:
    from PIL import Image

    root = make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=1)
    sample = list_split(root, "train")[0]
    Image.new("L", (5, 5), 2).save(sample.trimap_path)
    with pytest.raises(DatasetFileError, match="5x5 but image"):
        load_sample(sample, True, None)


def test_every_bad_file_is_reported_and_skip_bad_trains_on_the_rest(tmp_path: Path) -> None:
    root = make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=1)
    samples = list_split(root, "train")
    samples[0].image_path.write_bytes(samples[0].image_path.read_bytes()[:100])  # truncated JPEG
    samples[1].trimap_path.unlink()  # name in the split file, no trimap
    with pytest.raises(DatasetFileError, match="2 bad file") as error:
        PetDataset(root, "train", image_size=32, progress=False)
    assert samples[0].image_path.name in str(error.value) and samples[1].trimap_path.name in str(error.value)
    dataset = PetDataset(root, "train", image_size=32, progress=False, skip_bad=True)
    assert len(dataset) == len(samples) - 2 and len(dataset.skipped) == 2


def test_dataset_items_are_normalised_tensors(pet_dataset: Path) -> None:
    item = PetDataset(pet_dataset, "valid", build_transform("none", 32), image_size=32, progress=False)[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["image"].min() < 0  # ImageNet normalisation moved it below zero


def test_augmentation_moves_image_and_mask_together() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    image[10:30, 5:20] = 255
    mask[10:30, 5:20] = 1
    transform = build_transform("strong", 64)
    for seed in range(10):
        import random

        random.seed(seed)
        np.random.seed(seed)
        out = transform(image=image, mask=mask)
        bright = out["image"].mean(axis=2) > 0.5
        if out["mask"].sum() > 20:
            agreement = (bright == (out["mask"] > 0)).mean()
            assert agreement > 0.9


def test_eval_transform_is_deterministic() -> None:
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    mask = np.zeros((50, 70), np.uint8)
    transform = build_transform("none", 32)
    a, b = transform(image=image, mask=mask), transform(image=image, mask=mask)
    assert np.array_equal(a["image"], b["image"])
