"""Synthetic data for tests: images, trimaps and whole datasets in the official Oxford-IIIT Pet layout."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models import build_model
from models.checkpoint import Checkpoint, save_checkpoint

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford_pet_sample"


def blob_image(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with a bright ellipse on a noisy dark background, and its trimap (1 pet, 2 bg, 3 border)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
    ry, rx = height * rng.uniform(0.2, 0.35), width * rng.uniform(0.2, 0.35)
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    image = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    image[r <= 1.0] = np.clip(rng.integers(170, 255, size=3), 0, 255).astype(np.uint8)
    trimap = np.full((height, width), 2, dtype=np.uint8)
    trimap[r <= 0.8] = 1
    trimap[(r > 0.8) & (r <= 1.0)] = 3
    return image, trimap


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 90, exif: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    kwargs = {"exif": exif} if exif else {}
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def make_pet_dataset(root: Path, n_trainval: int = 20, n_test: int = 4, size: tuple[int, int] = (48, 40),
                     quirks: bool = True) -> Path:
    """Write a dataset in the official layout. With ``quirks``: a grayscale JPEG, an RGBA PNG, a CMYK JPEG and a
    PNG stored under a .jpg name, plus list.txt-style '#' comment lines in the split files."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    names = [f"{'Abyssinian' if i % 2 else 'beagle'}_{i + 1}" for i in range(n_trainval + n_test)]
    for i, name in enumerate(names):
        w, h = size[0] + (i % 3) * 4, size[1] + (i % 2) * 6  # sizes vary, as in the real release
        image, trimap = blob_image(w, h, seed=i)
        target = root / "images" / f"{name}.jpg"
        pil = Image.fromarray(image)
        if quirks and i == 1:
            pil.convert("L").save(target, format="JPEG")
        elif quirks and i == 2:
            pil.convert("RGBA").save(target, format="PNG")  # PNG under a .jpg name
        elif quirks and i == 3:
            pil.convert("CMYK").save(target, format="JPEG")
        else:
            pil.save(target, format="JPEG", quality=92)
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n" if quirks else ""
    lines = [f"{n} {1 + i % 2} {1 + i % 2} {1 + i % 3}" for i, n in enumerate(names)]
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines[:n_trainval]) + "\n")
    (root / "annotations" / "test.txt").write_text("\n".join(lines[n_trainval:]) + "\n")
    (root / "annotations" / "list.txt").write_text(header + "\n".join(lines) + "\n")
    return root


def make_checkpoint(path: Path, arch: str = "resnet34_unet", image_size: int = 64, epoch: int = 1,
                    seed: int = 0) -> Path:
    """A real checkpoint of a randomly initialised model (epoch >= 1 so the service accepts it)."""
    torch.manual_seed(seed)
    model = build_model(arch)
    checkpoint = Checkpoint(arch=arch, model_state=model.state_dict(), image_size=image_size, epoch=epoch,
                            metrics={"val_dice": 0.5})
    return save_checkpoint(checkpoint, path)
