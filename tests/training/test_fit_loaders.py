"""The data loaders a training run builds (``training.fit._make_loaders``), checked without training: which
photos each split holds, how batches are drawn and seeded, and what each rank of a distributed run gets."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler, SequentialSampler, Subset

from tests.factories import make_pet_dataset
from tests.training.test_teacher_mix import write_teacher_set
from training import fit
from training.config import TrainConfig
from training.copy_paste import CopyPaste
from training.data import PetDataset
from training.distributed import DistInfo, ShardSampler
from training.transforms import UNDEREXPOSURE

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 trainval photos: with 5 folds, 8 train and 2 valid. Read-only by convention."""
    return make_pet_dataset(tmp_path_factory.mktemp("pets"), n_trainval=10, n_test=2)


def loaders(pets: Path, info: DistInfo = DistInfo(), **overrides: object):  # noqa: ANN201
    settings = {"data_path": str(pets), "net": "unet", "batch_size": 3, "image_size": 32, "workers": 0,
                "device": "cpu", "folds": 5, "fold": 0, "augment": "report", "seed": 7, **overrides}
    return fit._make_loaders(TrainConfig(**settings), CPU, info, False)  # type: ignore[arg-type]


def transform_names(dataset: PetDataset) -> list[str]:
    return [type(step).__name__ for step in dataset.transform.transforms]


def test_training_batches_are_shuffled_with_the_runs_seed_and_validation_keeps_its_order(pets: Path) -> None:
    train, valid, sampler = loaders(pets)
    assert train.sampler is sampler and isinstance(valid.sampler, SequentialSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.shuffle, sampler.seed) == (1, 0, True, 7)
    assert (train.batch_size, valid.batch_size, train.drop_last, valid.drop_last) == (3, 3, True, False)
    assert (len(train.dataset), len(valid.dataset)) == (8, 2)
    assert train.generator.initial_seed() == 7
    order = list(train.sampler)
    assert list(loaders(pets)[0].sampler) == order  # a fresh generator: the same run draws the same batches
    assert list(loaders(pets, seed=8)[0].sampler) != order
    assert sorted(order) == list(range(8)) and order != list(range(8))
    sampler.set_epoch(1)
    assert list(sampler) != order  # each epoch its own order, a function of the seed and the epoch alone
    for loader in (train, valid):
        assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (0, False, False)
        assert loader.worker_init_fn is fit._seed_worker
    for loader in loaders(pets, workers=1)[:2]:  # workers start when a loader is iterated, not here
        assert (loader.num_workers, loader.persistent_workers) == (1, True)


def test_the_training_split_is_augmented_and_the_validation_split_only_resized(pets: Path) -> None:
    train, valid, _ = loaders(pets, augment="report", border_is_pet=False)
    assert "HorizontalFlip" in transform_names(train.dataset)
    assert transform_names(valid.dataset) == ["Resize", "Normalize"]
    for dataset, split in ((train.dataset, "train"), (valid.dataset, "valid")):
        assert (dataset.split, dataset.image_size, dataset.border_is_pet) == (split, 32, False)


def test_underexpose_reaches_the_training_photos_of_both_sources(pets: Path, tmp_path: Path) -> None:
    train, valid, _ = loaders(pets, augment="strong", underexpose=0.3)
    darken = train.dataset.transform.transforms[-2]
    assert type(darken).__name__ == "ColorJitter" and darken.p == 0.3 and tuple(darken.brightness) == UNDEREXPOSURE
    assert transform_names(valid.dataset) == ["Resize", "Normalize"]
    assert transform_names(loaders(pets, augment="strong")[0].dataset)[-2] == "GaussianBlur"  # 0: no step
    images, labels = write_teacher_set(tmp_path, count=3)
    config = TrainConfig(data_path=str(pets), image_size=32, augment="strong", underexpose=0.3,
                         teacher_images=str(images), teacher_labels=str(labels), teacher_holdout=0)
    mix = fit._with_teacher_labels(train.dataset, config, False)
    teacher = mix.datasets[-1]
    assert teacher.transform.transforms[-2].p == 0.3


def test_a_batch_as_large_as_the_split_keeps_every_photo(pets: Path) -> None:
    assert loaders(pets, batch_size=8)[0].drop_last is False
    assert loaders(pets, batch_size=7)[0].drop_last is True


def test_limit_keeps_the_first_photos_of_each_split(pets: Path) -> None:
    train, valid, _ = loaders(pets, limit=1)  # a single validation photo is still a validation split
    for loader, split in ((train, "train"), (valid, "valid")):
        assert isinstance(loader.dataset, Subset) and list(loader.dataset.indices) == [0]
        assert loader.dataset.dataset.split == split
    train, valid, _ = loaders(pets, limit=5)
    assert (list(train.dataset.indices), list(valid.dataset.indices)) == ([0, 1, 2, 3, 4], [0, 1])


def test_without_a_fold_every_photo_trains_and_there_is_no_validation(pets: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.fit"):
        train, valid, _ = loaders(pets, fold=None)
    assert valid is None and len(train.dataset) == 10
    assert caplog.messages == [f"data: 10 train / 0 valid images from {pets}",
                               "no validation split (--fold none): every epoch is saved as best.pt, the last one is "
                               "the model"]


def test_copy_paste_composites_from_the_decoded_training_photos(pets: Path) -> None:
    train, valid, _ = loaders(pets, augment="copy-paste")
    mixer = train.dataset.mixer
    assert isinstance(mixer, CopyPaste) and mixer.pool is train.dataset.decoded and len(mixer.pool) == 8
    assert valid.dataset.mixer is None
    with pytest.raises(ValueError) as info:
        loaders(pets, augment="copy-paste", cache=False)
    assert str(info.value) == "--augment copy-paste composites from the decoded cache: drop --no-cache"


def test_each_rank_draws_its_share_of_the_shuffled_photos_and_scores_its_own_validation_photos(
        pets: Path) -> None:
    train, valid, sampler = loaders(pets, DistInfo(rank=1, world_size=2, local_rank=1), limit=None)
    assert isinstance(sampler, DistributedSampler) and train.sampler is sampler and sampler.num_replicas == 2
    assert sampler.dataset is train.dataset and (sampler.shuffle, sampler.seed, sampler.rank) == (True, 7, 1)
    assert isinstance(valid.sampler, ShardSampler) and valid.sampler.indices == [1]  # of the 2 valid photos
    assert (valid.batch_size, valid.drop_last) == (3, False)
