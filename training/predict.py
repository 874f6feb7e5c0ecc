"""Predict masks for files, folders or a dataset split; write mask PNGs at each image's original size.

    python -m training.predict --model runs/unet/best.pt photos/ --out masks/ --overlay
    python -m training.predict --model runs/unet/best.pt --data_path dataset/oxford-iiit-pet --split test \\
        --out masks/ --grid grid.png
    python -m training.predict --model default photos/ --out masks/ --shard 0/4   # one of four processes

Outputs are written atomically (temporary file, then rename), and photos whose outputs already exist are
skipped (--overwrite predicts them again), so a killed run loses nothing: run it again and it does the rest.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.atomic_files import write_atomically
from models.imaging.overlay import tint
from models.imaging.pngwrite import encode_gray_png, encode_png
from training.cli import (
    EMBEDDED_MODEL,
    add_common_flags,
    add_inference_flags,
    at_least,
    check_can_write,
    model_path,
    open_engine,
    run_cli,
    setup_logging,
    unit_interval,
)
from training.data import SPLITS, Sample, list_split, load_sample
from training.images import PHOTO_SUFFIXES, DatasetFileError, read_rgb
from training.plots import save_comparison_grid
from training.shards import parse_shard, take_shard

log = logging.getLogger("training.predict")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petseg-predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("inputs", nargs="*", help="image files or folders (or use --split with --data_path)")
    p.add_argument("--model", required=True,
                   help=f"checkpoint to predict with; {EMBEDDED_MODEL!r} = the embedded default model")
    p.add_argument("--split", choices=SPLITS, default=None, help="predict a dataset split instead of files")
    p.add_argument("--out", default="predictions", help="folder for the mask PNGs")
    p.add_argument("--threshold", type=unit_interval, default=0.5, help="probability threshold in [0, 1]")
    add_inference_flags(p)
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--grid", default=None, help="write an image | truth | prediction grid PNG here")
    p.add_argument("--grid-rows", type=int, default=6, help="how many photos the --grid PNG draws, spread over the run")
    p.add_argument("--limit", type=at_least(1), default=None, help="only the first N inputs (before sharding)")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="take share I of N (0 <= I < N) of the inputs, by a hash of each name, so N "
                        "processes together predict every photo once; auto/N takes I from "
                        "$JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)")
    p.add_argument("--overwrite", action="store_true",
                   help="predict every photo, also those whose outputs exist (default: skip them)")
    p.add_argument("--skip-bad", action="store_true",
                   help="log an unreadable photo and go on (default: stop with exit code 2)")
    return p


def collect_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetFileError(f"input not found: {path}")
    if not files:
        raise DatasetFileError("no images found in the inputs given")
    return files


def output_names(name: str, with_overlay: bool) -> list[str]:
    return [f"{name}_mask.png"] + ([f"{name}_overlay.png"] if with_overlay else [])


def existing_files(folder: Path) -> set[str]:
    """Names in ``folder``, read once: one directory listing, not a stat per photo on a network volume."""
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


def save_png(array: np.ndarray, path: Path) -> None:
    """Write atomically: a killed process leaves the whole PNG or none (and maybe a hidden ``.tmp`` file).

    Masks (2-D) are written as the service writes them (run-length deflate), pictures with the Up filter, both
    across the cores when large (models.imaging.pngwrite)."""
    data = encode_gray_png(array) if array.ndim == 2 else encode_png(array)
    write_atomically(path, lambda handle: handle.write(data))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.inputs and args.split is None:
        parser.error("give image files/folders, or --split with --data_path")
    setup_logging(args.verbose)

    def run() -> int:
        check_can_write(args.out, folder=True)
        if args.grid:
            check_can_write(args.grid, folder=False)
        if args.split:
            items: list[tuple[str, Path | Sample]] = [(s.name, s)
                                                      for s in list_split(Path(args.data_path), args.split)]
        else:
            items = [(p.stem, p) for p in collect_inputs(args.inputs)]
        items = items[: args.limit]
        if args.shard:
            total = len(items)
            items = take_shard(items, args.shard)
            log.info("shard %s: %d of %d photo(s)", args.shard, len(items), total)
        out = Path(args.out)
        # Grid rows are spread evenly over the inputs, so a sorted split shows every breed, not the first one.
        # They are predicted even when their outputs exist: the grid needs the images and masks in memory.
        step = max(1, len(items) // max(1, args.grid_rows))
        grid_pick = set(range(0, len(items), step)[: args.grid_rows]) if args.grid else set()
        done = set() if args.overwrite or not out.is_dir() else existing_files(out)
        todo = [(index, name, item) for index, (name, item) in enumerate(items)
                if index in grid_pick or not done.issuperset(output_names(name, args.overlay))]
        skipped = len(items) - len(todo)
        if skipped:
            log.info("skipped %d photo(s) whose outputs exist in %s (--overwrite predicts them again)",
                     skipped, out)
        if not todo:
            print(f"nothing to do: the outputs of all {len(items)} photo(s) exist in {out}")
            return 0
        segmenter = open_engine(args, model_path(args.model), len(todo))
        segmenter.warmup((1,))
        out.mkdir(parents=True, exist_ok=True)  # once the model loaded: a refused model leaves no empty folder
        border = segmenter.checkpoint.border_is_pet
        grid_rows, bad = [], 0
        for index, name, item in tqdm(todo, desc="predict", unit="img", disable=not sys.stderr.isatty()):
            try:
                if isinstance(item, Path):
                    image, truth = read_rgb(item), None
                else:
                    image, truth = load_sample(item, border, None)
            except DatasetFileError as exc:
                if not args.skip_bad:
                    raise
                log.warning("skipping an unreadable photo: %s", exc)
                bad += 1
                continue
            mask = segmenter.predict(image) > args.threshold
            if args.overlay:
                save_png(tint(image, mask), out / f"{name}_overlay.png")
            save_png(mask.astype(np.uint8) * 255, out / f"{name}_mask.png")
            if index in grid_pick:
                grid_rows.append((name, image, truth, mask))
        if grid_rows:
            save_comparison_grid(grid_rows, Path(args.grid), title=f"{segmenter.info.arch} predictions")
            log.info("comparison grid written to %s", args.grid)
        notes = [f"{skipped} skipped (outputs exist)"] if skipped else []
        notes += [f"{bad} unreadable photo(s) skipped"] if bad else []
        print(f"wrote {len(todo) - bad} mask(s) to {out}" + (f" ({'; '.join(notes)})" if notes else ""))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
