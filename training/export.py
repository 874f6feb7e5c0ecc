"""Turn a training checkpoint into a shippable one: weights only (optionally fp16), plus model-card facts; or into
an ONNX model (BatchNorm folded, fp32 or int8, dynamic batch/height/width, checkpoint facts in its metadata).

    python -m training.export --model runs/default/best.pt --out models/weights/default.pt --half \\
        --card training_data="Oxford-IIIT Pet sample: 3 breeds, 270 train images" licence="CC BY-SA 4.0"
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
from training.cli import run_cli, setup_logging

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


def main(argv: list[str] | None = None) -> int:
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
                   help="int8: an Oxford-IIIT Pet root (its train split) or a folder of training photos "
                        "(default $PETSEG_CALIBRATION_DATA, else dataset/oxford-iiit-pet)")
    p.add_argument("--card", nargs="*", default=[], metavar="KEY=VALUE", help="model-card facts to embed")
    args = p.parse_args(argv)
    if args.format == "onnx" and args.half:
        p.error("--half applies to checkpoints; the ONNX model is fp32 (or --precision int8)")
    if args.format == "checkpoint" and (args.precision != "fp32" or args.calibration):
        p.error("--precision and --calibration apply to --format onnx")
    setup_logging()

    def run() -> int:
        checkpoint = load_checkpoint(args.model)
        checkpoint.card = {**checkpoint.card, **parse_card(args.card)}
        if args.format == "onnx":
            return export_onnx_file(checkpoint, Path(args.model), Path(args.out), args.precision, args.calibration)
        exported = checkpoint.half() if args.half else checkpoint
        exported.training_state = None
        path = save_checkpoint(exported, args.out)
        log.info("exported %s (epoch %d, val Dice %.4f) to %s: %.1f MB", checkpoint.arch, checkpoint.epoch,
                 checkpoint.metrics.get("val_dice", float("nan")), path, path.stat().st_size / 1e6)
        return 0

    return run_cli(run)


def export_onnx_file(checkpoint: Checkpoint, source: Path, out: Path, precision: str,
                     calibration: str | None) -> int:
    """Write the ONNX model (fp32, or int8 quantised from it), then compare it with PyTorch."""
    missing = [m for m in ("onnx", "onnxscript") + (("onnxruntime",) if precision == "int8" else ())
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"ONNX export needs {', '.join(missing)}: pip install 'petseg[onnx]'")
    from models.onnx_export import build_onnx, save_onnx
    from models.quantize import calibration_photos, calibration_source, quantize_int8

    photos = calibration_photos(calibration_source(calibration)) if precision == "int8" else []  # fail early
    model = build_onnx(checkpoint, checkpoint_sha256=file_sha256(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".petseg-export-", dir=out.parent) as tmp:
        written = save_onnx(model, Path(tmp) / "fp32.onnx")
        if precision == "int8":
            written = quantize_int8(written, Path(tmp) / "int8.onnx", checkpoint, photos)
        _compare_with_torch(checkpoint, written, precision)  # before the file takes its place
        os.replace(written, out)
    log.info("exported %s (epoch %d) to ONNX %s, %s: %.1f MB", checkpoint.arch, checkpoint.epoch, precision, out,
             out.stat().st_size / 1e6)
    return 0


def _compare_with_torch(checkpoint: Checkpoint, out: Path, precision: str) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: the export was checked with onnx.checker only")
        return
    from models.onnx_export import max_probability_difference

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
