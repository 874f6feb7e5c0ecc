"""Predict masks for files, folders or a dataset split; write mask PNGs at each image's original size.

    python -m training.predict --model runs/unet/best.pt photos/ --out masks/ --overlay
    python -m training.predict --model runs/unet/best.pt --data_path dataset/oxford-iiit-pet --split test \\
        --out masks/ --grid grid.png
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from models.inference import Segmenter
from training.cli import add_common_flags, add_inference_flags, compile_mode_for, run_cli, setup_logging
from training.data import SPLITS, list_split, load_sample
from training.images import DatasetFileError, read_rgb
from training.plots import overlay, save_comparison_grid

log = logging.getLogger("training.predict")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petseg-predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("inputs", nargs="*", help="image files or folders (or use --split with --data_path)")
    p.add_argument("--model", required=True, help="checkpoint to predict with")
    p.add_argument("--split", choices=SPLITS, default=None, help="predict a dataset split instead of files")
    p.add_argument("--out", default="predictions", help="folder for the mask PNGs")
    p.add_argument("--threshold", type=float, default=0.5)
    add_inference_flags(p)
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--grid", default=None, help="write an image | truth | prediction grid PNG here")
    p.add_argument("--grid-rows", type=int, default=6)
    p.add_argument("--limit", type=int, default=None)
    return p


def collect_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetFileError(f"input not found: {path}")
    if not files:
        raise DatasetFileError("no images found in the inputs given")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.inputs and args.split is None:
        parser.error("give image files/folders, or --split with --data_path")
    setup_logging(args.verbose)

    def run() -> int:
        if args.split:
            items = [(s.name, s) for s in list_split(Path(args.data_path), args.split)]
        else:
            items = [(p.stem, p) for p in collect_inputs(args.inputs)]
        items = items[: args.limit]
        segmenter = Segmenter.from_file(args.model, device=args.device, precision=args.precision,
                                        compile=compile_mode_for(args.compile, len(items)), allow_untrained=True)
        segmenter.warmup((1,))
        border = segmenter.checkpoint.border_is_pet
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        grid_rows = []
        # Grid rows are spread evenly over the inputs, so a sorted split shows every breed, not the first one.
        step = max(1, len(items) // max(1, args.grid_rows))
        grid_pick = set(range(0, len(items), step)[: args.grid_rows])
        for index, (name, item) in enumerate(tqdm(items, desc="predict", unit="img", disable=not sys.stderr.isatty())):
            if isinstance(item, Path):
                image, truth = read_rgb(item), None
            else:
                image, truth = load_sample(item, border, None)
            mask = segmenter.predict(image) > args.threshold
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{name}_mask.png")
            if args.overlay:
                Image.fromarray(overlay(image, mask)).save(out / f"{name}_overlay.png")
            if args.grid and index in grid_pick:
                grid_rows.append((name, image, truth, mask))
        if args.grid and grid_rows:
            save_comparison_grid(grid_rows, Path(args.grid), title=f"{segmenter.info.arch} predictions")
            log.info("comparison grid written to %s", args.grid)
        print(f"wrote {len(items)} mask(s) to {out}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
