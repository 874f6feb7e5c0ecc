"""Turn a training checkpoint into a shippable one: weights only (optionally fp16), plus model-card facts; or into
an ONNX model (BatchNorm folded, fp32 or int8, dynamic batch/height/width, checkpoint facts in its metadata).

    python -m training.export --model runs/default/best.pt --out models/weights/default.pt --half \\
        --card training_data="Oxford-IIIT Pet sample: 3 breeds, 270 train images" licence="CC BY-SA 4.0"
    python -m training.export --model runs/finetuned/last.pt --interpolate models/weights/default.pt:0.5 \\
        --out models/weights/default.pt --half          # weight-space average of two runs (WiSE-FT)
    python -m training.export --model models/weights/default.pt --format onnx --out petseg.onnx
    python -m training.export --model models/weights/default.pt --format onnx --precision int8 \\
        --calibration dataset/oxford-iiit-pet --out petseg-int8.onnx

The ONNX model is checked with onnx.checker and, where onnxruntime is installed, against PyTorch on random
images of two sizes: an fp32 export more than 1e-3 away in probability is an error.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from models.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from training.cli import check_can_write, run_cli, setup_logging

log = logging.getLogger("training.export")
FP32_TOLERANCE = 1e-3  # largest probability difference an fp32 ONNX export may show against PyTorch


def parse_card(items: list[str]) -> dict[str, str]:
    card: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--card takes key=value pairs, got {item!r}")
        card[key.strip()] = value.strip()
    return card


def parse_metrics(items: list[str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in parse_card(items).items():
        try:
            metrics[key] = float(value)
        except ValueError:
            raise ValueError(f"--metric takes key=number pairs, got {key}={value!r}") from None
    return metrics


def parse_interpolation(text: str) -> tuple[Checkpoint, float]:
    path, sep, weight = text.rpartition(":")
    try:
        share = float(weight)
    except ValueError:
        share = -1.0
    if not sep or not path or not 0.0 <= share <= 1.0:
        raise ValueError(f"--interpolate takes CKPT:WEIGHT with WEIGHT in [0, 1], got {text!r}")
    return load_checkpoint(path), share


def interpolate_weights(checkpoint: Checkpoint, other: Checkpoint, share: float) -> Checkpoint:
    """``checkpoint`` with weights ``(1 - share) * its own + share * other's`` (integer buffers kept).

    Averaging a fine-tuned model with the model it started from keeps most of what each learnt: the
    fine-tuning's robustness and the original's accuracy on its own data (Wortsman et al. 2022, "Robust
    fine-tuning of zero-shot models"). Both must share an architecture, hence a start."""
    if other.arch != checkpoint.arch or other.model_state.keys() != checkpoint.model_state.keys():
        raise ValueError(f"cannot interpolate {checkpoint.arch} with {other.arch}: the weights differ in layout")
    state = {}
    for key, mine in checkpoint.model_state.items():
        theirs = other.model_state[key]
        if mine.shape != theirs.shape:
            raise ValueError(f"cannot interpolate: {key} is {tuple(mine.shape)} and {tuple(theirs.shape)}")
        state[key] = (1 - share) * mine.float() + share * theirs.float() if mine.is_floating_point() else mine
    checkpoint.model_state = state
    checkpoint.metrics = {}  # they scored the run's own weights, not the average: re-measure (--metric)
    checkpoint.card = {**checkpoint.card, "interpolated": f"{1 - share:g} x this run + {share:g} x other"}
    return checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petseg-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="training checkpoint (best.pt or last.pt)")
    p.add_argument("--out", required=True, help="where to write the exported checkpoint or ONNX model")
    p.add_argument("--format", choices=("checkpoint", "onnx"), default="checkpoint",
                   help="a petseg checkpoint (default) or an ONNX model")
    p.add_argument("--half", action="store_true", help="store weights in fp16 (half the size; loaded as fp32)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="ONNX only: int8 = static quantisation calibrated on --calibration photos")
    p.add_argument("--calibration", default=None,
                   help="int8 calibration photos: an Oxford-IIIT Pet root (its train split) or a folder of "
                        "training photos (default $PETSEG_CALIBRATION_DATA, else dataset/oxford-iiit-pet). With "
                        "--format checkpoint: measure the int8 activation ranges on them and store them in the "
                        "checkpoint, so int8 can be served where the photos are not")
    p.add_argument("--interpolate", default=None, metavar="CKPT:WEIGHT",
                   help="average the weights with another checkpoint of the same architecture: (1 - WEIGHT) * "
                        "--model + WEIGHT * CKPT (e.g. a fine-tuned run and the model it started from: WiSE-FT)")
    p.add_argument("--metric", nargs="*", default=[], metavar="KEY=NUMBER",
                   help="measured scores to record (e.g. val_dice=0.867; /model shows val_dice)")
    p.add_argument("--card", nargs="*", default=[], metavar="KEY=VALUE", help="model-card facts to embed")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.format == "onnx" and args.half:
        p.error("--half applies to checkpoints; the ONNX model is fp32 (or --precision int8)")
    if args.format == "checkpoint" and args.precision != "fp32":
        p.error("--precision applies to --format onnx (a checkpoint takes --calibration to carry int8 ranges)")
    setup_logging()

    def run() -> int:
        check_can_write(args.out, folder=False)
        checkpoint = load_checkpoint(args.model)
        if args.interpolate:
            checkpoint = interpolate_weights(checkpoint, *parse_interpolation(args.interpolate))
        checkpoint.card = {**checkpoint.card, **parse_card(args.card)}
        checkpoint.metrics = {**checkpoint.metrics, **parse_metrics(args.metric)}
        if args.format == "onnx":
            return export_onnx_file(checkpoint, Path(args.model), Path(args.out), args.precision, args.calibration)
        exported = checkpoint.half() if args.half else checkpoint
        exported.training_state = None
        exported.int8_calibration = int8_ranges_for(exported, args.calibration)
        path = save_checkpoint(exported, args.out)
        log.info("exported %s (epoch %d, val Dice %.4f) to %s: %.1f MB", checkpoint.arch, checkpoint.epoch,
                 checkpoint.metrics.get("val_dice", float("nan")), path, path.stat().st_size / 1e6)
        return 0

    return run_cli(run)


def _require(task: str, modules: tuple[str, ...]) -> None:
    """``ValueError`` naming what ``task`` needs and is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{task} needs {', '.join(missing)}: pip install 'petseg[onnx]'")


def int8_ranges_for(checkpoint: Checkpoint, calibration: str | None) -> dict[str, str]:
    """The int8 ranges to store: measured on ``calibration`` photos when given, else the ones the checkpoint
    already carries if its weights are still those they were measured with, else none."""
    from models.engine.quantize import Int8Calibration, calibration_photos, calibration_source, measure_ranges

    if calibration:
        _require("measuring int8 ranges", ("onnx", "onnxscript", "onnxruntime"))
        photos = calibration_photos(calibration_source(calibration))
        log.info("measuring int8 activation ranges on %d photos from %s", len(photos), calibration)
        return measure_ranges(checkpoint, photos).to_dict()
    carried = Int8Calibration.from_dict(checkpoint.int8_calibration)
    if carried is not None and not carried.fits_weights(checkpoint):
        log.info("dropping the int8 ranges the checkpoint carried: its weights changed (--calibration measures "
                 "new ones)")
        return {}
    return carried.to_dict() if carried is not None else {}


def export_onnx_file(checkpoint: Checkpoint, source: Path, out: Path, precision: str,
                     calibration: str | None) -> int:
    """Write the ONNX model (fp32, or int8 quantised from it), then compare it with PyTorch."""
    _require("ONNX export", ("onnx", "onnxscript") + (("onnxruntime",) if precision == "int8" else ()))
    from models.engine.onnx_export import build_onnx, save_onnx
    from models.engine.quantize import Int8Calibration, calibration_photos, calibration_source, quantize_int8

    carried = Int8Calibration.from_dict(checkpoint.int8_calibration)
    if precision == "int8" and calibration is None and carried is not None and carried.fits_weights(checkpoint):
        photos: list[Path] = []  # the checkpoint's own ranges (quantize_int8 checks they fit this export's graph)
        log.info("int8: using the activation ranges the checkpoint carries (%s)", carried.photos)
    else:
        carried = None
        photos = calibration_photos(calibration_source(calibration)) if precision == "int8" else []  # fail early
    model = build_onnx(checkpoint, checkpoint_sha256=file_sha256(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".petseg-export-", dir=out.parent) as tmp:
        written = save_onnx(model, Path(tmp) / "fp32.onnx")
        if precision == "int8":
            quantize_int8(written, Path(tmp) / "int8.onnx", checkpoint, photos, ranges=carried)
            written = Path(tmp) / "int8.onnx"
        _compare_with_torch(checkpoint, written, precision)  # before the file takes its place
        os.replace(written, out)
    log.info("exported %s (epoch %d) to ONNX %s, %s: %.1f MB", checkpoint.arch, checkpoint.epoch, precision, out,
             out.stat().st_size / 1e6)
    return 0


def _compare_with_torch(checkpoint: Checkpoint, out: Path, precision: str) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: the export was checked with onnx.checker only")
        return
    from models.engine.onnx_export import max_probability_difference

    size = checkpoint.image_size
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((2, 3, size, size), dtype=np.float32),
               rng.standard_normal((1, 3, size + 5, max(size - 3, 1)), dtype=np.float32)]
    worst = max_probability_difference(checkpoint, out, batches)
    log.info("largest probability difference from PyTorch fp32 on random images: %.2g", worst)
    if precision == "fp32" and worst > FP32_TOLERANCE:
        raise ValueError(f"the ONNX model differs from PyTorch by {worst:.3g} in probability "
                         f"(more than {FP32_TOLERANCE:g}): not written correctly; please report it")


if __name__ == "__main__":
    sys.exit(main())
