"""Reading the official layout: splits, quirky images, trimap rules, bad files, aligned augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from tests.factories import make_pet_dataset
from training.data import PetDataset, list_split, load_sample
from training.images import DatasetFileError, read_rgb, read_trimap, trimap_to_mask
from training.transforms import UNDEREXPOSURE, build_transform


def split_names(root: Path, file: str) -> list[str]:
    lines = (root / "annotations" / file).read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]


def test_split_train_is_trainval_index_mod_10_not_0(pet_dataset: Path) -> None:
    names = split_names(pet_dataset, "trainval.txt")
    assert [s.name for s in list_split(pet_dataset, "train")] == [
        n for i, n in enumerate(names) if i % 10 != 0
    ]


def test_split_valid_is_trainval_index_mod_10_is_0(pet_dataset: Path) -> None:
    names = split_names(pet_dataset, "trainval.txt")
    assert [s.name for s in list_split(pet_dataset, "valid")] == [names[0], names[10]]


def test_split_test_is_test_txt(pet_dataset: Path) -> None:
    assert [s.name for s in list_split(pet_dataset, "test")] == split_names(pet_dataset, "test.txt")


def test_split_samples_point_at_image_and_trimap(pet_dataset: Path) -> None:
    sample = list_split(pet_dataset, "test")[0]
    assert sample.image_path == pet_dataset / "images" / f"{sample.name}.jpg"
    assert sample.trimap_path == pet_dataset / "annotations" / "trimaps" / f"{sample.name}.png"


def test_split_comment_and_blank_lines_do_not_shift_the_split(pet_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "pets"
    shutil.copytree(pet_dataset, root)
    trainval = root / "annotations" / "trainval.txt"
    lines = trainval.read_text().splitlines()
    trainval.write_text(
        "\n".join(
            [
                "#Image CLASS-ID SPECIES BREED ID",
                "#ID: 1:37 Class ids",
                *lines[:5],
                "",
                "  # an indented comment",
                *lines[5:],
            ]
        )
        + "\n"
    )
    for split in ("train", "valid"):
        assert [s.name for s in list_split(root, split)] == [s.name for s in list_split(pet_dataset, split)]


def test_split_unknown_name_is_refused(pet_dataset: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'val'"):
        list_split(pet_dataset, "val")


def test_split_of_a_missing_folder_says_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError, match="data folder not found"):
        list_split(tmp_path / "nowhere", "train")


def test_split_of_a_folder_in_another_layout_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetFileError, match="missing annotations/trimaps"):
        list_split(tmp_path, "train")


@pytest.mark.parametrize(
    ("index", "fmt", "mode"),
    [(1, "JPEG", "L"), (2, "PNG", "RGBA"), (3, "JPEG", "CMYK")],
    ids=["grayscale", "rgba-png-under-jpg-name", "cmyk"],
)
def test_read_rgb_turns_quirky_images_into_hxwx3_uint8(
    pet_dataset: Path, index: int, fmt: str, mode: str
) -> None:
    path = pet_dataset / "images" / f"{split_names(pet_dataset, 'trainval.txt')[index]}.jpg"
    with Image.open(path) as raw:
        assert (raw.format, raw.mode) == (fmt, mode)  # the quirk is really there
        size = raw.size
    image = read_rgb(path)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8


def test_read_rgb_keeps_the_pet_bright_in_a_cmyk_jpeg(pet_dataset: Path) -> None:
    name = split_names(pet_dataset, "trainval.txt")[3]
    image = read_rgb(pet_dataset / "images" / f"{name}.jpg").astype(float).mean(axis=2)
    mask = trimap_to_mask(read_trimap(pet_dataset / "annotations" / "trimaps" / f"{name}.png")) > 0
    assert image[mask].mean() > image[~mask].mean() + 50  # colours converted, not inverted


def test_read_rgb_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError, match="image not found: .*ghost.jpg"):
        read_rgb(tmp_path / "ghost.jpg")


def test_read_rgb_of_a_corrupt_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetFileError, match="cannot read image .*bad.jpg"):
        read_rgb(tmp_path / "bad.jpg")


@pytest.mark.parametrize(
    ("border_is_pet", "expected"),
    [(True, [[1, 0, 1]]), (False, [[1, 0, 0]])],
    ids=["border-as-pet", "border-as-background"],
)
def test_trimap_to_mask_border_rule(border_is_pet: bool, expected: list[list[int]]) -> None:
    mask = trimap_to_mask(np.array([[1, 2, 3]], dtype=np.uint8), border_is_pet=border_is_pet)
    assert mask.dtype == np.uint8 and mask.tolist() == expected


def test_missing_image_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=1)
    victim = list_split(root, "train")[0].image_path
    victim.unlink()
    with pytest.raises(DatasetFileError, match=f"image not found: .*{victim.name}"):
        PetDataset(root, "train", image_size=32, progress=False)


def test_trimap_of_the_wrong_size_is_an_error_naming_both_files(tmp_path: Path) -> None:
    root = make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=1)
    sample = list_split(root, "train")[0]
    Image.new("L", (5, 5), 2).save(sample.trimap_path)
    with pytest.raises(DatasetFileError) as error:
        load_sample(sample, True, None)
    message = str(error.value)
    assert str(sample.trimap_path) in message and str(sample.image_path) in message and "5x5" in message


def test_every_bad_file_is_reported_at_once(tmp_path: Path) -> None:
    root = make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=1)
    samples = list_split(root, "train")
    samples[0].image_path.write_bytes(samples[0].image_path.read_bytes()[:100])  # truncated JPEG
    samples[1].trimap_path.unlink()  # listed in the split file, no trimap
    with pytest.raises(DatasetFileError, match="2 bad file") as error:
        PetDataset(root, "train", image_size=32, progress=False)
    assert samples[0].image_path.name in str(error.value) and samples[1].trimap_path.name in str(error.value)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_skip_bad_drops_and_records_the_bad_samples(tmp_path: Path, cache: bool) -> None:
    root = make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=1)
    samples = list_split(root, "train")
    samples[0].image_path.write_bytes(samples[0].image_path.read_bytes()[:100])
    samples[1].trimap_path.unlink()
    dataset = PetDataset(root, "train", image_size=32, cache=cache, skip_bad=True, progress=False)
    assert len(dataset) == len(samples) - 2 and len(dataset.skipped) == 2
    assert [s.name for s in dataset.samples] == [s.name for s in samples[2:]]
    assert [dataset[i]["name"] for i in range(len(dataset))] == [s.name for s in samples[2:]]


def test_dataset_items_are_normalised_tensors(pet_dataset: Path) -> None:
    item = PetDataset(pet_dataset, "valid", build_transform("none", 32), image_size=32, progress=False)[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["image"].min() < 0  # ImageNet normalisation moved it below zero


def test_dataset_cached_and_uncached_items_are_equal(pet_dataset: Path) -> None:
    transform = build_transform("none", 32)
    cached = PetDataset(pet_dataset, "test", transform, image_size=32, progress=False)
    uncached = PetDataset(pet_dataset, "test", transform, image_size=32, cache=False, progress=False)
    for i in range(len(cached)):
        assert torch.equal(cached[i]["image"], uncached[i]["image"]) and torch.equal(
            cached[i]["mask"], uncached[i]["mask"]
        )


def test_dataset_border_rule_reaches_the_masks(pet_dataset: Path) -> None:
    pet = PetDataset(pet_dataset, "test", image_size=48, progress=False)[0]["mask"].sum()
    background = PetDataset(pet_dataset, "test", image_size=48, border_is_pet=False, progress=False)[0][
        "mask"
    ].sum()
    assert pet > background > 0


def _left_object() -> tuple[np.ndarray, np.ndarray]:
    """A bright object in the top-left quarter of a dark image: no flip or rotation leaves it in place."""
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    image[8:30, 4:22] = 255
    mask[8:30, 4:22] = 1
    return image, mask


@pytest.mark.parametrize("kind", ["report", "strong"])
def test_augmentation_moves_image_and_mask_together(kind: str) -> None:
    image, mask = _left_object()
    transform = build_transform(kind, 64)
    transform.set_random_seed(0)
    flipped = kept = 0
    for _ in range(30):
        out = transform(image=image, mask=mask)
        brightness = out["image"].mean(axis=2)
        moved = out["mask"].astype(float)
        assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
        assert np.corrcoef(brightness.ravel(), moved.ravel())[0, 1] > 0.8
        columns = np.nonzero(moved.any(axis=0))[0]
        if len(columns):
            flipped += columns.mean() > 32
            kept += columns.mean() < 32
    assert flipped > 0 and kept > 0  # the flip really happened, and not always


def test_augmentation_keeps_masks_binary() -> None:
    image, mask = _left_object()
    transform = build_transform("strong", 64)
    transform.set_random_seed(1)
    for _ in range(10):
        assert set(np.unique(transform(image=image, mask=mask)["mask"]).tolist()) <= {0, 1}


def test_valid_transform_is_deterministic() -> None:
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    mask = (np.random.default_rng(1).random((50, 70)) > 0.5).astype(np.uint8)
    transform = build_transform("none", 32)
    a, b = transform(image=image, mask=mask), transform(image=image, mask=mask)
    assert a["image"].shape == (32, 32, 3) and a["mask"].shape == (32, 32)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])


def mean_level(normalised: np.ndarray) -> float:
    """The mean 0-255 level of an image the pipeline normalised."""
    return float((normalised * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)).mean() * 255)


def test_underexpose_darkens_training_photos_by_one_to_one_and_a_half_stops() -> None:
    grey, mask = np.full((32, 32, 3), 200, np.uint8), np.zeros((32, 32), np.uint8)
    levels = {}
    for share in (0.0, 1.0):
        transform = build_transform("strong", 32, underexpose=share)
        transform.set_random_seed(0)
        levels[share] = [mean_level(transform(image=grey, mask=mask)["image"]) for _ in range(60)]
    low, high = UNDEREXPOSURE
    assert min(levels[0.0]) > 200 * 0.7 - 1  # strong's own jitter: brightness x0.7 to x1.3
    assert max(levels[1.0]) < 200 * 1.3 * high + 1 and min(levels[1.0]) > 200 * 0.7 * low - 1
    assert sum(level < 200 * 0.7 - 1 for level in levels[1.0]) > 30  # most fall below anything strong alone gives
    assert (low, high) == (0.35, 0.7)


@pytest.mark.parametrize("kind", ["report", "strong", "copy-paste"])
def test_underexpose_is_one_step_before_normalising_with_that_chance(kind: str) -> None:
    plain = [type(step).__name__ for step in build_transform(kind, 32).transforms]
    steps = build_transform(kind, 32, underexpose=0.2).transforms
    assert [type(step).__name__ for step in steps] == [*plain[:-1], "ColorJitter", "Normalize"]
    darken = steps[-2]
    assert darken.p == 0.2 and tuple(darken.brightness) == UNDEREXPOSURE
    assert tuple(darken.contrast) == tuple(darken.saturation) == (1.0, 1.0) and tuple(darken.hue) == (0.0, 0.0)


def test_validation_photos_are_never_darkened() -> None:
    assert [type(step).__name__ for step in build_transform("none", 32, underexpose=1.0).transforms] == [
        "Resize", "Normalize"]


def test_unknown_augmentation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown augmentation 'heavy'"):
        build_transform("heavy", 32)
