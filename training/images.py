"""Robust image and trimap reading: every mode of the real release loads as RGB, bad files name themselves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MASK_IGNORE", "PHOTO_SUFFIXES", "DatasetFileError", "photos_by_name", "read_rgb", "read_trimap",
           "trimap_to_mask"]

TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
MASK_IGNORE = 255  # training targets: a pixel the loss and the training metrics skip (``--border ignore``)
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


class DatasetFileError(ValueError):
    """A dataset file that is missing, unreadable or inconsistent; the message names it."""


def photos_by_name(folder: Path) -> dict[str, Path]:
    """The photos of a folder by name (file stem), in name order, from one listing."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES}


def read_rgb(path: Path) -> np.ndarray:
    """Decode any Pillow-readable image (grayscale, RGBA, CMYK, PNG under a .jpg name...) to HxWx3 uint8."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image)
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetFileError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFileError(f"cannot read image {path}: {exc}") from None


def read_trimap(path: Path) -> np.ndarray:
    """Read an Oxford trimap PNG (1 pet, 2 background, 3 border) as an HxW uint8 array."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L") if image.mode not in ("L", "P", "I", "I;16") else image)
    except FileNotFoundError:
        raise DatasetFileError(f"trimap not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFileError(f"cannot read trimap {path}: {exc}") from None
    if array.ndim != 2:
        raise DatasetFileError(f"trimap {path} is not single-channel (shape {array.shape})")
    return array.astype(np.uint8, copy=False)


def trimap_to_mask(trimap: np.ndarray, border_is_pet: bool = True, ignore_border: bool = False) -> np.ndarray:
    """Pet (1) -> 1, background (2) -> 0, border (3) -> 1 when ``border_is_pet`` (the report's rule) else 0, or
    ``MASK_IGNORE`` with ``ignore_border`` (a training target: the border band is neither pet nor background)."""
    mask = trimap == TRIMAP_PET
    if border_is_pet and not ignore_border:
        mask |= trimap == TRIMAP_BORDER
    mask = mask.astype(np.uint8)
    if ignore_border:
        mask[trimap == TRIMAP_BORDER] = MASK_IGNORE
    return mask
