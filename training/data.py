"""Oxford-IIIT Pet in its official layout: split files, samples, and a decode-once cache.

Layout: ``images/NAME.jpg``, ``annotations/trimaps/NAME.png``, ``annotations/trainval.txt`` and
``annotations/test.txt`` (lines ``NAME CLASS-ID SPECIES BREED-ID``; ``#`` lines are comments).
Splits follow the lab's starter code: ``train`` = trainval lines whose index % 10 != 0, ``valid`` = index % 10 == 0,
``test`` = test.txt. Cross-validation generalises the rule: with ``folds=K, fold=I`` the valid split is the lines whose
index % K == I and train is the rest, so K runs (I = 0..K-1) score every trainval image exactly once; the default
``K=10, I=0`` is the lab's split. Leave-one-breed-out (``holdout_breed=B``): valid is every trainval image of
breed B and train the other breeds', which estimates quality on a breed no label covered.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from training.images import DatasetFileError, read_rgb, read_trimap, trimap_to_mask
from training.metrics import breed_of

__all__ = ["SPLITS", "PetDataset", "Sample", "check_fold", "list_split", "load_pair", "validate_layout"]

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
_SPLIT_FILE = {"train": "trainval.txt", "valid": "trainval.txt", "test": "test.txt"}


@dataclass(frozen=True)
class Sample:
    name: str
    image_path: Path
    trimap_path: Path


def validate_layout(root: Path, split: str) -> None:
    """Fail early, naming what is missing, before any training starts."""
    if not root.is_dir():
        raise DatasetFileError(f"data folder not found: {root} (use --download to fetch the dataset)")
    for sub in ("images", "annotations/trimaps", f"annotations/{_SPLIT_FILE[split]}"):
        if not (root / sub).exists():
            raise DatasetFileError(f"{root} is not in the Oxford-IIIT Pet layout: missing {sub}")


def check_fold(folds: int, fold: int | None) -> None:
    """``fold=None``: no fold is held out (train on every trainval image, no valid split)."""
    if fold is None:
        return
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"--fold must be in 0..{folds - 1} and --folds at least 2 (got fold {fold} of {folds})")


def list_split(root: Path, split: str, folds: int = 10, fold: int | None = 0, holdout_breed: str | None = None
               ) -> list[Sample]:
    """Names of a split, in file order, as samples with their image and trimap paths.

    ``valid`` is fold ``fold`` of ``folds`` (trainval index % folds == fold) and ``train`` the other folds; with
    ``fold=None`` ``train`` is all of trainval and ``valid`` is empty. With ``holdout_breed`` the folds are breeds
    instead: ``valid`` is that breed's trainval images and ``train`` every other breed's."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    check_fold(folds, fold)
    validate_layout(root, split)
    lines = (root / "annotations" / _SPLIT_FILE[split]).read_text().splitlines()
    names = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if holdout_breed is not None and split != "test":
        if holdout_breed not in {breed_of(n) for n in names}:
            known = ", ".join(sorted({breed_of(n) for n in names}))
            raise ValueError(f"no breed {holdout_breed!r} in {root}'s trainval list (it has {known})")
        keep = (lambda n: breed_of(n) == holdout_breed) if split == "valid" else (lambda n: breed_of(n) != holdout_breed)
        names = [n for n in names if keep(n)]
    elif split == "train" and fold is not None:
        names = [n for i, n in enumerate(names) if i % folds != fold]
    elif split == "valid":
        names = [] if fold is None else [n for i, n in enumerate(names) if i % folds == fold]
    return [Sample(n, root / "images" / f"{n}.jpg", root / "annotations" / "trimaps" / f"{n}.png") for n in names]


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The photo and its trimap, checked to be the same size."""
    image, trimap = read_rgb(sample.image_path), read_trimap(sample.trimap_path)
    if image.shape[:2] != trimap.shape:
        raise DatasetFileError(
            f"trimap {sample.trimap_path} is {trimap.shape[1]}x{trimap.shape[0]} but image "
            f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}"
        )
    return image, trimap


def load_sample(sample: Sample, border_is_pet: bool, size: int | None, ignore_border: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image and its mask; resize both to ``size`` x ``size`` when given (mask: nearest, so
    ``MASK_IGNORE`` pixels stay what they are)."""
    image, trimap = load_pair(sample)
    mask = trimap_to_mask(trimap, border_is_pet, ignore_border)
    if size is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


class PetDataset(Dataset[dict[str, Any]]):
    """Samples of one split as ``{"image": float (3,H,W), "mask": float (1,H,W), "name": str}``.

    With ``ignore_border=True`` the border band's mask pixels are ``MASK_IGNORE`` (for the loss to skip).
    With ``cache=True`` every image is decoded and resized to ``image_size`` once, up front, so epochs only pay
    for augmentation. With ``skip_bad=True`` unreadable samples are reported and dropped instead of raising.
    ``mixer`` (set after construction, e.g. ``training.copy_paste.CopyPaste``) rewrites a decoded sample before the
    transform: ``mixer(index, image, mask, rng) -> (image, mask)``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        image_size: int = 256,
        border_is_pet: bool = True,
        ignore_border: bool = False,
        cache: bool = True,
        skip_bad: bool = False,
        progress: bool = True,
        folds: int = 10,
        fold: int | None = 0,
        holdout_breed: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.image_size = image_size
        self.border_is_pet = border_is_pet
        self.ignore_border = ignore_border
        self.samples = list_split(self.root, split, folds, fold, holdout_breed)
        self.skipped: list[str] = []
        self.mixer: Callable[[int, np.ndarray, np.ndarray, np.random.Generator],
                             tuple[np.ndarray, np.ndarray]] | None = None
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.skip_bad = skip_bad
        if cache:
            self._decode_all(progress)
        elif skip_bad:
            self._decode_all(progress, keep=False)

    def _decode_all(self, progress: bool, keep: bool = True) -> None:
        """Decode every sample once; collect every bad file rather than stopping at the first."""
        size = self.image_size if keep else None
        good: list[Sample] = []
        cache: list[tuple[np.ndarray, np.ndarray]] = []
        problems: list[str] = []
        for sample in tqdm(self.samples, desc=f"decode {self.split}", unit="img", disable=not progress,
                           leave=False):
            try:
                decoded = load_sample(sample, self.border_is_pet, size, self.ignore_border)
            except DatasetFileError as exc:
                problems.append(str(exc))
                continue
            good.append(sample)
            if keep:
                cache.append(decoded)
        if problems and not self.skip_bad:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DatasetFileError(f"{len(problems)} bad file(s) in split {self.split!r} "
                                   f"(use --skip-bad to train on the rest):\n  {shown}{more}")
        for problem in problems:
            log.warning("skipping bad sample: %s", problem)
        if problems:
            log.warning("%s: skipped %d of %d samples", self.split, len(problems), len(self.samples))
        self.skipped = problems
        self.samples = good
        self._cache = cache if keep else None

    @property
    def decoded(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The decode-once cache: (image, mask) pairs at ``image_size``."""
        if self._cache is None:
            raise ValueError("this dataset was built with cache=False; copy-paste needs the decoded cache")
        return self._cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._cache is not None:
            image, mask = self._cache[index]
        else:
            image, mask = load_sample(self.samples[index], self.border_is_pet, self.image_size, self.ignore_border)
        if self.mixer is not None:
            # np.random is seeded per DataLoader worker (training.fit), so composites differ between workers.
            image, mask = self.mixer(index, image, mask, np.random.default_rng(np.random.randint(0, 2**31 - 1)))
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0)
        return {"image": image_t, "mask": mask_t, "name": self.samples[index].name}
