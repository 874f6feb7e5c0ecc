"""int8: static post-training quantisation of the exported ONNX model, calibrated on training photos.

ONNX Runtime's QDQ format: per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations, ranges
from the min/max of each activation over the calibration photos. ONNX Runtime fuses the QuantizeLinear /
DequantizeLinear pairs around each convolution into integer kernels; OpenVINO reads the same file as FakeQuantize
and runs int8 too. The final sigmoid stays in fp32, so probabilities are not rounded to 1/255.

Calibration photos: the training split of an Oxford-IIIT Pet root (trainval lines whose index % 10 != 0, the
project's rule, so never the validation photos that measure the result) or any folder of photos;
``PETSEG_CALIBRATION_DATA``, else ``dataset/oxford-iiit-pet`` (where ``petseg-train --download`` puts it). 40
photos spread evenly over the list (every breed), resized and normalised exactly as the service does.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from models.checkpoint import Checkpoint
from models.inference import resize_for_model
from models.onnx_export import INPUT_NAME, normalise_pixels, quiet_loggers, read_metadata, set_metadata

__all__ = ["CALIBRATION_ENV", "CALIBRATION_PHOTOS", "DEFAULT_CALIBRATION", "QUANTISATION", "CalibrationError",
           "calibration_digest", "calibration_photos", "calibration_source", "quantize_int8"]

log = logging.getLogger(__name__)

CALIBRATION_ENV = "PETSEG_CALIBRATION_DATA"
DEFAULT_CALIBRATION = Path("dataset/oxford-iiit-pet")
CALIBRATION_PHOTOS = 40
QUANTISATION = "ort-qdq-s8w-perchannel-u8a-minmax/1"  # part of the cache key: change it when the recipe changes
_PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class CalibrationError(ValueError):
    """No calibration photos where they were looked for."""


def calibration_source(configured: str | os.PathLike[str] | None = None) -> Path:
    """The folder to calibrate on: the argument, else ``PETSEG_CALIBRATION_DATA``, else ``dataset/oxford-iiit-pet``."""
    text = str(configured or os.environ.get(CALIBRATION_ENV, "") or DEFAULT_CALIBRATION).strip()
    return Path(text).expanduser()


def calibration_photos(source: Path, count: int = CALIBRATION_PHOTOS) -> list[Path]:
    """Up to ``count`` photos spread evenly over the training split of an Oxford-IIIT Pet root, or over a folder's
    photos (sorted by name)."""
    trainval = source / "annotations" / "trainval.txt"
    if trainval.is_file():
        lines = [line.split()[0] for line in trainval.read_text().splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        train = [name for index, name in enumerate(lines) if index % 10 != 0]  # the project's train split
        photos = [source / "images" / f"{name}.jpg" for name in train]
        photos = [p for p in photos if p.is_file()]
    elif source.is_dir():
        photos = sorted(p for p in source.iterdir() if p.suffix.lower() in _PHOTO_SUFFIXES)
    else:
        photos = []
    if not photos:
        raise CalibrationError(
            f"int8 needs calibration photos and found none in {source}: set {CALIBRATION_ENV} to an Oxford-IIIT "
            f"Pet root (its training split is used) or to a folder of training photos")
    step = max(1.0, len(photos) / count)
    return [photos[int(i * step)] for i in range(min(count, len(photos)))]


def calibration_digest(photos: Sequence[Path]) -> str:
    """Identifies a calibration set (names and sizes) and the recipe, for the cache key."""
    digest = hashlib.sha256(QUANTISATION.encode())
    for photo in photos:
        digest.update(f"{photo.name}:{photo.stat().st_size};".encode())
    return digest.hexdigest()


def calibration_batches(photos: Sequence[Path], checkpoint: Checkpoint) -> Iterator[np.ndarray]:
    """Each photo as the service feeds it: EXIF-upright RGB, INTER_AREA to the model size, normalised, (1,3,S,S)."""
    for photo in photos:
        with Image.open(photo) as opened:
            rgb = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        pixels = resize_for_model(rgb, checkpoint.image_size).transpose(2, 0, 1)[None]
        yield normalise_pixels(pixels, checkpoint.mean, checkpoint.std)


class _Reader:
    """ONNX Runtime's calibration-data-reader protocol over :func:`calibration_batches`."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # the MinMax calibrator reads once
        raise NotImplementedError


def quantize_int8(fp32_model: Path, out: Path, checkpoint: Checkpoint, photos: Sequence[Path]) -> Path:
    """Quantise the exported fp32 model at ``fp32_model`` to ``out`` (written atomically); returns ``out``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_model))
    sigmoids = [node.name for node in model.graph.node if node.op_type == "Sigmoid"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="petseg-int8-", dir=out.parent) as tmp:
        quantised = Path(tmp) / out.name
        with quiet_loggers(""):  # the quantiser logs a line per widened bias scale to the root logger
            quantize_static(str(fp32_model), str(quantised), _Reader(calibration_batches(photos, checkpoint)),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=sigmoids)
        result = onnx.load(str(quantised))
        metadata = read_metadata(model)
        metadata.update({"petseg.precision": "int8", "petseg.quantisation": QUANTISATION,
                         "petseg.calibration": f"{len(photos)} photos: " + ", ".join(p.stem for p in photos)})
        set_metadata(result, metadata)
        onnx.save(result, str(quantised))
        os.replace(quantised, out)
    log.info("quantised %s to int8 (calibrated on %d photos): %.1f MB", checkpoint.arch, len(photos),
             out.stat().st_size / 1e6)
    return out
