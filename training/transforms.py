"""Albumentations pipelines that move image and mask together.

``report``: the lab report's train pipeline (resize, horizontal flip, shift/scale/rotate within 15 degrees, colour
jitter, ImageNet normalisation). ``strong``: the same ideas pushed harder plus crops, blur and greyscale, for
from-scratch training on a few hundred images. ``copy-paste``: ``strong`` applied to copy-paste composites (see
``training.copy_paste``). ``none``: resize and normalise only (valid/test).
"""
from __future__ import annotations

import albumentations as A
import cv2

from models.checkpoint import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["AUGMENTATIONS", "build_transform"]

AUGMENTATIONS = ("none", "report", "strong", "copy-paste")


def build_transform(kind: str, image_size: int) -> A.Compose:
    """The pipeline for ``kind`` (one of ``AUGMENTATIONS``) at ``image_size`` x ``image_size``."""
    resize = A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)
    normalize = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if kind == "none":
        return A.Compose([resize, normalize])
    if kind == "report":
        return A.Compose(
            [
                resize,
                A.HorizontalFlip(p=0.5),
                A.Affine(translate_percent=(-0.2, 0.2), scale=(0.8, 1.2), rotate=(-15, 15),
                         border_mode=cv2.BORDER_CONSTANT, p=0.5),
                A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.5),
                normalize,
            ]
        )
    if kind in ("strong", "copy-paste"):  # copy-paste composites first (training.copy_paste), then this
        return A.Compose(
            [
                resize,
                A.HorizontalFlip(p=0.5),
                A.RandomResizedCrop(size=(image_size, image_size), scale=(0.5, 1.0), ratio=(0.75, 1.33), p=0.5),
                A.Affine(translate_percent=(-0.15, 0.15), scale=(0.75, 1.25), rotate=(-20, 20),
                         border_mode=cv2.BORDER_REFLECT_101, p=0.7),
                A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
                A.ToGray(p=0.1),
                A.GaussianBlur(blur_limit=(3, 5), p=0.1),
                normalize,
            ]
        )
    raise ValueError(f"unknown augmentation {kind!r}; expected one of {', '.join(AUGMENTATIONS)}")
