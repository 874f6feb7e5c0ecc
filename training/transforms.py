"""Albumentations pipelines that move image and mask together.

``report``: the lab report's train pipeline (resize, horizontal flip, shift/scale/rotate within 15 degrees, colour
jitter, ImageNet normalisation). ``strong``: the same ideas pushed harder plus crops, blur and greyscale, for
from-scratch training on a few hundred images. ``copy-paste``: ``strong`` applied to copy-paste composites (see
``training.copy_paste``). ``none``: resize and normalise only (valid/test). Any of the training pipelines can also
darken a share of the photos (``underexpose``): the colour jitter alone never shows the model an underexposed room.
"""
from __future__ import annotations

import albumentations as A
import cv2

from models.checkpoint import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["AUGMENTATIONS", "UNDEREXPOSURE", "build_transform"]

AUGMENTATIONS = ("none", "report", "strong", "copy-paste")
UNDEREXPOSURE = (0.35, 0.7)  # brightness factors of an underexposed photo: one to one and a half stops darker


def build_transform(kind: str, image_size: int, *, underexpose: float = 0.0) -> A.Compose:
    """The pipeline for ``kind`` (one of ``AUGMENTATIONS``) at ``image_size`` x ``image_size``.

    ``underexpose``: the chance that a training pipeline also scales the photo's brightness by a factor drawn from
    ``UNDEREXPOSURE``. One epoch with 0.2 made the embedded model score the same on validation photos darkened by
    one stop as on the photos themselves (docs/model-card.md); ``none`` never darkens."""
    resize = A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)
    normalize = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if kind == "none":
        return A.Compose([resize, normalize])
    if kind == "report":
        steps = [
            resize,
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.2, 0.2), scale=(0.8, 1.2), rotate=(-15, 15),
                     border_mode=cv2.BORDER_CONSTANT, p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.5),
        ]
    elif kind in ("strong", "copy-paste"):  # copy-paste composites first (training.copy_paste), then this
        steps = [
            resize,
            A.HorizontalFlip(p=0.5),
            A.RandomResizedCrop(size=(image_size, image_size), scale=(0.5, 1.0), ratio=(0.75, 1.33), p=0.5),
            A.Affine(translate_percent=(-0.15, 0.15), scale=(0.75, 1.25), rotate=(-20, 20),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
            A.ToGray(p=0.1),
            A.GaussianBlur(blur_limit=(3, 5), p=0.1),
        ]
    else:
        raise ValueError(f"unknown augmentation {kind!r}; expected one of {', '.join(AUGMENTATIONS)}")
    if underexpose > 0:
        steps.append(A.ColorJitter(brightness=UNDEREXPOSURE, contrast=(1.0, 1.0), saturation=(1.0, 1.0),
                                   hue=(0.0, 0.0), p=underexpose))
    return A.Compose([*steps, normalize])
