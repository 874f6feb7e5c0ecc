"""int8: static post-training quantisation of the exported ONNX model, calibrated on training photos.

ONNX Runtime's QDQ format: per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations, ranges
from the min/max of each activation over the calibration photos. ONNX Runtime fuses the QuantizeLinear /
DequantizeLinear pairs around each convolution into integer kernels; OpenVINO reads the same file as FakeQuantize
and runs int8 too. The final sigmoid stays in fp32, so probabilities are not rounded to 1/255.

Calibration photos: the training split of an Oxford-IIIT Pet root (trainval lines whose index % 10 != 0, the
project's rule, so never the validation photos that measure the result) or any folder of photos;
``PETSEG_CALIBRATION_DATA``, else ``dataset/oxford-iiit-pet`` (where ``petseg-train --download`` puts it). 40
photos spread evenly over the list (every breed), resized and normalised exactly as the service does.

Calibration only measures each activation's range, so its result travels without the photos: ``petseg-export
--calibration`` stores the ranges (ONNX Runtime's calibration cache, a few kB of JSON) in the checkpoint
(:class:`Int8Calibration`), and a service with no photos quantises from them. The embedded model carries ranges
measured on the sample's training photos, so int8 needs no dataset on the serving machine.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from models.checkpoint import Checkpoint
from models.engine.onnx_export import INPUT_NAME, normalise_pixels, quiet_loggers, read_metadata, set_metadata
from models.engine.segmenter import resize_for_model

__all__ = ["CALIBRATION_ENV", "CALIBRATION_PHOTOS", "DEFAULT_CALIBRATION", "QUANTISATION", "CalibrationError",
           "Int8Calibration", "calibration_configured", "calibration_digest", "calibration_photos",
           "calibration_source", "check_int8_possible", "graph_fingerprint", "measure_ranges", "quantize_int8"]

log = logging.getLogger(__name__)

CALIBRATION_ENV = "PETSEG_CALIBRATION_DATA"
DEFAULT_CALIBRATION = Path("dataset/oxford-iiit-pet")
CALIBRATION_PHOTOS = 40
QUANTISATION = "ort-qdq-s8w-perchannel-u8a-minmax/1"  # part of the cache key: change it when the recipe changes
_PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class CalibrationError(ValueError):
    """No calibration photos where they were looked for."""


@dataclass(frozen=True)
class Int8Calibration:
    """Activation ranges measured on calibration photos: what int8 needs from them, stored in a checkpoint.

    ``ranges`` is ONNX Runtime's calibration cache (JSON text) keyed by the tensor names of the fp32 ONNX graph
    whose structure ``graph`` fingerprints; ``weights`` is the digest of the weights they were measured with. Ranges
    are applied only where both match, so another exporter's graph or retrained weights never get stale ranges."""

    ranges: str
    photos: str  # how many photos, and which
    graph: str
    weights: str
    recipe: str = QUANTISATION

    def to_dict(self) -> dict[str, str]:
        return {"ranges": self.ranges, "photos": self.photos, "graph": self.graph, "weights": self.weights,
                "recipe": self.recipe}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Int8Calibration | None:
        """The calibration a checkpoint carries, or None (older checkpoints, or another quantisation recipe)."""
        if not raw or raw.get("recipe") != QUANTISATION:
            return None
        try:
            return cls(ranges=str(raw["ranges"]), photos=str(raw["photos"]), graph=str(raw["graph"]),
                       weights=str(raw["weights"]))
        except KeyError:
            return None

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.recipe}|{self.graph}|{self.weights}|{self.ranges}".encode()).hexdigest()

    def fits_weights(self, checkpoint: Checkpoint) -> bool:
        return self.weights == checkpoint.weights_digest()

    def check_weights(self, checkpoint: Checkpoint) -> None:
        """``CalibrationError`` unless these ranges were measured with ``checkpoint``'s weights."""
        if not self.fits_weights(checkpoint):
            raise CalibrationError(f"the checkpoint's int8 ranges were measured with other weights: set "
                                   f"{CALIBRATION_ENV} to training photos to calibrate again")

    def check_fits(self, fp32_model: Path, checkpoint: Checkpoint) -> None:
        """``CalibrationError`` unless these ranges were measured on this graph with these weights."""
        self.check_weights(checkpoint)
        if self.graph != graph_fingerprint(fp32_model):
            raise CalibrationError(f"the checkpoint's int8 ranges were measured on another ONNX export of the model "
                                   f"(another torch version?): set {CALIBRATION_ENV} to training photos to calibrate "
                                   f"again")


def graph_fingerprint(onnx_file: Path) -> str:
    """The structure of an ONNX graph (every node's type, inputs and outputs, by name), not its weights' values."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    digest = hashlib.sha256()
    for node in graph.node:
        digest.update(f"{node.op_type}({','.join(node.input)})->{','.join(node.output)};".encode())
    return digest.hexdigest()


def calibration_configured(configured: str | os.PathLike[str] | None = None) -> bool:
    """Whether calibration photos were named (argument or ``PETSEG_CALIBRATION_DATA``), which then take precedence
    over the ranges a checkpoint carries."""
    return bool(str(configured or "").strip() or os.environ.get(CALIBRATION_ENV, "").strip())


def check_int8_possible(checkpoint: Checkpoint, configured: str | os.PathLike[str] | None = None) -> None:
    """``CalibrationError`` unless int8 has what it needs: calibration photos (named, or in the default folder) or
    ranges in the checkpoint measured with its weights."""
    carried = Int8Calibration.from_dict(checkpoint.int8_calibration)
    if calibration_configured(configured) or carried is None:
        calibration_photos(calibration_source(configured))
    else:
        carried.check_weights(checkpoint)


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


def quantize_int8(fp32_model: Path, out: Path, checkpoint: Checkpoint, photos: Sequence[Path] = (), *,
                  ranges: Int8Calibration | None = None) -> Int8Calibration:
    """Quantise the exported fp32 model at ``fp32_model`` to ``out`` (written atomically), calibrated on ``photos``
    or, without photos, from measured ``ranges`` (which must fit this graph and these weights).

    Returns the calibration used, ranges included, so that it can be stored in the checkpoint."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not photos:
        if ranges is None:
            raise CalibrationError("int8 needs calibration photos or measured ranges; neither was given")
        ranges.check_fits(fp32_model, checkpoint)
    model = onnx.load(str(fp32_model))
    sigmoids = [node.name for node in model.graph.node if node.op_type == "Sigmoid"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="petseg-int8-", dir=out.parent) as tmp:
        quantised, cache = Path(tmp) / out.name, Path(tmp) / "ranges.json"
        reader = _Reader(calibration_batches(photos, checkpoint)) if photos else None
        if reader is None:
            cache.write_text(ranges.ranges)  # type: ignore[union-attr]  # ONNX Runtime finds it, skips calibration
        with quiet_loggers(""):  # the quantiser logs a line per widened bias scale to the root logger
            quantize_static(str(fp32_model), str(quantised), reader, calibration_cache_path=str(cache),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=sigmoids)
        used = ranges if reader is None else Int8Calibration(
            ranges=cache.read_text(), photos=describe_photos(photos), graph=graph_fingerprint(fp32_model),
            weights=checkpoint.weights_digest())
        result = onnx.load(str(quantised))
        metadata = read_metadata(model)
        metadata.update({"petseg.precision": "int8", "petseg.quantisation": QUANTISATION,
                         "petseg.calibration": used.photos})
        set_metadata(result, metadata)
        onnx.save(result, str(quantised))
        os.replace(quantised, out)
    log.info("quantised %s to int8 (%s %s): %.1f MB", checkpoint.arch,
             "calibrated on" if photos else "with the checkpoint's ranges from", used.photos.split(":")[0],
             out.stat().st_size / 1e6)
    return used


def describe_photos(photos: Sequence[Path]) -> str:
    return f"{len(photos)} photos: " + ", ".join(p.stem for p in photos)


def measure_ranges(checkpoint: Checkpoint, photos: Sequence[Path]) -> Int8Calibration:
    """Export ``checkpoint`` to ONNX and measure its activation ranges on ``photos``, to be stored in it."""
    from models.engine.onnx_export import build_onnx, save_onnx

    with tempfile.TemporaryDirectory(prefix="petseg-ranges-") as tmp:
        fp32 = save_onnx(build_onnx(checkpoint), Path(tmp) / "fp32.onnx")
        return quantize_int8(fp32, Path(tmp) / "int8.onnx", checkpoint, photos)
