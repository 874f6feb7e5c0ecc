"""How close a model comes to its teacher on teacher-labelled photos that never trained it, breed by breed.

The photos of the new breeds have no trimaps, so this is a proxy, not a score against the truth: the teacher's
label, thresholded at 0.5, with a band of ``edge_band`` pixels each side of the teacher's outline left out (a
student trained with the trimaps' border convention draws a fatter outline than a salient-object teacher; the
band keeps that convention out of the number). Combined with the teacher's own Dice against trimaps on the
labelled breeds, it says how much of the teacher's quality the student took over on breeds no trimap covers.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from models.engine.segmenter import SegmenterBase
from training.images import photos_by_name, read_rgb
from training.metrics import SegmentationMetrics, breed_of
from training.plots import save_comparison_grid
from training.pseudo_data import read_soft_label

__all__ = ["outline_band", "score_against_teacher", "worst_per_breed_grid"]


def outline_band(teacher_mask: np.ndarray, edge_band: int) -> np.ndarray:
    """Pixels within ``edge_band`` of the mask's outline (both sides)."""
    if edge_band <= 0:
        return np.zeros(teacher_mask.shape, bool)
    mask = teacher_mask.astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge_band + 1, 2 * edge_band + 1))
    return cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)


def score_against_teacher(segmenter: SegmenterBase, images: Path, labels: Path, names: Sequence[str], *,
                          threshold: float = 0.5, edge_band: int = 2, progress: bool = True
                          ) -> SegmentationMetrics:
    """Per-photo Dice of the model's mask against the teacher's, at each photo's size, outline band left out."""
    metrics = SegmentationMetrics()
    photos = photos_by_name(images)
    for name in tqdm(names, desc="against the teacher", unit="img", disable=not progress):
        image = read_rgb(photos.get(name, images / f"{name}.jpg"))  # a missing photo: read_rgb names it
        teacher = read_soft_label(labels / f"{name}.png") >= 0.5
        pred = segmenter.predict(image) > threshold
        ignore = torch.from_numpy(outline_band(teacher, edge_band))[None]
        metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(teacher)[None], [name], ignore=ignore)
    return metrics


def worst_per_breed_grid(segmenter: SegmenterBase, metrics: SegmentationMetrics, images: Path, labels: Path,
                         path: Path, threshold: float = 0.5) -> Path:
    """Photo | teacher | model for the worst photo of each breed."""
    worst: dict[str, tuple[str, float]] = {}
    for name, dice in zip(metrics.names, metrics.dice, strict=True):
        breed = breed_of(name)
        if breed not in worst or dice < worst[breed][1]:
            worst[breed] = (name, dice)
    rows = []
    photos = photos_by_name(images)
    for breed in sorted(worst, key=lambda b: worst[b][1]):
        name, dice = worst[breed]
        image = read_rgb(photos.get(name, images / f"{name}.jpg"))
        rows.append((f"{name}  Dice {dice:.3f} vs teacher", image, read_soft_label(labels / f"{name}.png") >= 0.5,
                     segmenter.predict(image) > threshold))
    return save_comparison_grid(rows, path, title="worst photo of each breed against the teacher",
                                labels=("teacher's mask", "model's mask"))

