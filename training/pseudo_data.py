"""Teacher-labelled photos as training samples, and the labelled + teacher-labelled mix.

A teacher label (``petseg-pseudolabel``) is a soft map. It becomes a training target in three steps, at the
training size:

- confident pixels become targets: p >= ``confidence`` -> pet (1), p <= 1 - ``confidence`` -> background (0);
- pixels in between are ``MASK_IGNORE``: the loss and the training Dice skip them;
- a band of ``edge_band`` pixels on each side of the teacher's outline (p = 0.5) is ignored too. A salient-object
  teacher draws the tight outline of the animal, while the Oxford trimaps count a border band around it as pet:
  with the band left out, the student learns where the outline lies from the teacher and the border convention
  from the real trimaps alone.

Every sample carries ``source`` (``SOURCE_LABELLED`` or ``SOURCE_TEACHER``), so the loop can log each source's
loss and weigh them (``pseudo_weight``).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from training.images import MASK_IGNORE, DatasetFileError, photos_by_name, read_rgb
from training.shards import shard_of

__all__ = ["SOURCE_LABELLED", "SOURCE_NAMES", "SOURCE_TEACHER", "TaggedDataset", "TeacherLabelledDataset",
           "held_out_names", "is_teacher_holdout", "read_soft_label", "soft_to_target"]

log = logging.getLogger(__name__)
SOURCE_LABELLED, SOURCE_TEACHER = 0, 1
SOURCE_NAMES = {SOURCE_LABELLED: "labelled", SOURCE_TEACHER: "teacher"}


def is_teacher_holdout(name: str, every: int) -> bool:
    """Whether a teacher-labelled photo is held out of training (1 in ``every``, by a hash of its name)."""
    return every > 0 and shard_of(name, every) == 0


def held_out_names(labels: Path, every: int) -> list[str]:
    """The labelled names in ``labels`` that training leaves out (``is_teacher_holdout``), sorted."""
    return sorted(p.stem for p in labels.glob("*.png") if is_teacher_holdout(p.stem, every))


def soft_to_target(prob: np.ndarray, confidence: float, edge_band: int) -> np.ndarray:
    """HxW probabilities in [0, 1] -> uint8 target: 1 pet, 0 background, ``MASK_IGNORE`` unsure or near the
    outline."""
    if not 0.5 <= confidence <= 1.0:
        raise ValueError(f"confidence must be in [0.5, 1], not {confidence}")
    target = np.full(prob.shape, MASK_IGNORE, np.uint8)
    target[prob <= 1.0 - confidence] = 0
    target[prob >= confidence] = 1  # after background: at confidence 0.5, p = 0.5 is pet (as mask = p >= 0.5)
    if edge_band > 0:
        pet = (prob >= 0.5).astype(np.uint8)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge_band + 1, 2 * edge_band + 1))
        band = cv2.dilate(pet, kernel) != cv2.erode(pet, kernel)
        target[band] = MASK_IGNORE
    return target


def grow_soft_label(prob: np.ndarray, grow: float) -> np.ndarray:
    """The teacher's probabilities with the pet region grown by ``grow`` times the label's long side (a grey
    dilation: every level set moves out by the same radius).

    A salient-object teacher draws the pet's own outline; the trimaps' border band straddles that outline, and
    with the border counted as pet (``--border pet``) the labelled target reaches the band's outer edge. Growing
    the teacher's labels by about half the band puts both sources on one convention: on the 300 sample photos
    ISNet's labels score 0.863 against the trimaps with the border as pet and 0.901 grown by 0.008, in each of
    the three breeds alike, while Dice with the border ignored moves from 0.938 to 0.934."""
    radius = round(grow * max(prob.shape))
    if radius <= 0:
        return prob
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(prob, kernel)


def read_soft_label(path: Path) -> np.ndarray:
    """An 8-bit label PNG -> float32 probabilities."""
    try:
        with open(path, "rb") as handle:
            data = np.frombuffer(handle.read(), np.uint8)
    except FileNotFoundError:
        raise DatasetFileError(f"teacher label not found: {path}") from None
    levels = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if levels is None:
        raise DatasetFileError(f"cannot read teacher label {path}")
    return levels.astype(np.float32) / 255.0


class TeacherLabelledDataset(Dataset[dict[str, Any]]):
    """Photos of ``images`` whose teacher label is in ``labels`` (``NAME.png``), decoded once at ``image_size``.

    Photos without a label are left out (a labelling run still going, or one that stopped early); ``names``
    restricts the set further (e.g. to hold some out). Unreadable photos or labels are logged and skipped."""

    def __init__(self, images: str | Path, labels: str | Path, *, image_size: int, confidence: float = 0.9,
                 edge_band: int = 2, grow: float = 0.0, transform: Callable[..., dict[str, Any]] | None = None,
                 names: set[str] | None = None, progress: bool = True) -> None:
        self.images, self.labels = Path(images), Path(labels)
        for folder, what in ((self.images, "teacher-labelled photos"), (self.labels, "teacher labels")):
            if not folder.is_dir():
                raise DatasetFileError(f"folder of {what} not found: {folder}")
        record = self.labels / "teacher.json"
        self.teacher: dict[str, Any] = json.loads(record.read_text()) if record.exists() else {}
        labelled = {p.stem for p in self.labels.glob("*.png")}
        photos = photos_by_name(self.images)
        chosen = sorted(n for n in photos if n in labelled and (names is None or n in names))
        if not chosen:
            raise DatasetFileError(f"no photo in {self.images} has a teacher label in {self.labels}")
        log.info("teacher labels: %d of the %d photos in %s are labelled and taken", len(chosen), len(photos),
                 self.images)
        self.transform = transform
        self.image_size = image_size
        self.names: list[str] = []
        self.skipped: list[str] = []
        self._cache: list[tuple[np.ndarray, np.ndarray]] = []
        for name in tqdm(chosen, desc="decode teacher-labelled", unit="img", disable=not progress, leave=False):
            try:
                image = read_rgb(photos[name])
                prob = grow_soft_label(read_soft_label(self.labels / f"{name}.png"), grow)
            except DatasetFileError as exc:
                log.warning("skipping: %s", exc)
                self.skipped.append(str(exc))
                continue
            size = (image_size, image_size)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            prob = cv2.resize(prob, size, interpolation=cv2.INTER_AREA)
            self._cache.append((image, soft_to_target(prob, confidence, edge_band)))
            self.names.append(name)
        if not self.names:
            raise DatasetFileError(f"none of the {len(chosen)} teacher-labelled photos could be read")

    @property
    def decoded(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._cache

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self._cache[index]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float(),
                "mask": torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0),
                "name": self.names[index], "source": SOURCE_TEACHER}


class TaggedDataset(Dataset[dict[str, Any]]):
    """Another dataset's samples with a ``source`` tag added (for the labelled side of the mix)."""

    def __init__(self, dataset: Dataset[dict[str, Any]], source: int) -> None:
        self.dataset, self.source = dataset, source

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "source": self.source}
