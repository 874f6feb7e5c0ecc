"""K-fold cross-validation: train one model per fold, score each on the fold it never saw, pool every image.

    python -m training.cv --data_path ../shared/data/oxford_pet_sample --folds 5 -n resnet34_unet -e 40 \\
        --image-size 192 --augment copy-paste --out runs/cv-copy-paste

On a few hundred photos a 30-image validation split moves by several points between equally good recipes; the
mean over every image of K held-out folds does not. Each fold trains with every ``petseg-train`` flag into
``OUT/foldI/``; a fold whose ``last.pt`` exists is resumed, so a killed run loses at most one epoch. Each fold is
scored with its last epoch, never with the epoch that scored best on the fold itself. The pooled
report (``OUT/cv_report.json``) gives Dice under both border conventions, the share of images under 0.7, the
per-breed means and the worst images, drawn in ``OUT/cv_worst.png``.

``--by-breed`` makes each breed a fold (leave-one-breed-out, into ``OUT/breed-B/``): every photo is scored by a
model that never saw a trimap of its breed, the estimate for breeds the labels do not cover.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from models.engine.segmenter import Segmenter
from models.imaging.blobs import DEFAULT_MIN_BLOB_RATIO
from training.cli import at_least, check_can_write, run_cli, setup_logging
from training.data import list_split
from training.evaluate import Evaluation, draw_worst, evaluate
from training.metrics import breed_of
from training.train import build_parser as build_train_parser
from training.train import config_from_args

__all__ = ["main", "run_cross_validation"]

log = logging.getLogger("training.cv")


def build_parser():  # noqa: ANN201 - argparse's parser, as petseg-train builds it
    p = build_train_parser()
    p.prog = "petseg-cv"
    p.description = __doc__
    p.set_defaults(folds=5)
    p.add_argument("--worst", type=at_least(0), default=10, help="how many of the worst images to draw")
    p.add_argument("--by-breed", action="store_true",
                   help="leave one breed out: one fold per breed of trainval (instead of --folds)")
    return p


def fold_keys(args) -> list[int | str]:  # noqa: ANN001 - argparse.Namespace
    """The folds to run: 0..K-1, or with ``--by-breed`` the trainval breeds in name order."""
    if not args.by_breed:
        return list(range(args.folds))
    names = [s.name for split in ("train", "valid") for s in list_split(Path(args.data_path), split, 10, 0)]
    return sorted({breed_of(n) for n in names})


def fold_dir(root: Path, key: int | str) -> Path:
    return root / (f"breed-{key}" if isinstance(key, str) else f"fold{key}")


def fold_samples(args, key: int | str) -> list:  # noqa: ANN001
    if isinstance(key, str):
        return list_split(Path(args.data_path), "valid", holdout_breed=key)
    return list_split(Path(args.data_path), "valid", args.folds, key)


def run_cross_validation(args, progress: bool) -> dict[str, object]:  # noqa: ANN001 - argparse.Namespace
    """Train and score every fold; return (and write) the pooled report."""
    from training.fit import fit

    root = Path(args.out or f"runs/cv-{args.net}")
    pooled = Evaluation.empty()
    fold_of: dict[str, int | str] = {}
    keys = fold_keys(args)
    for index, fold in enumerate(keys):
        config = config_from_args(args)
        config.out = str(fold_dir(root, fold))
        if isinstance(fold, str):
            config.holdout_breed = fold
        else:
            config.fold = fold
        last = Path(config.out) / "last.pt"
        config.resume = str(last) if last.is_file() else None
        log.info("fold %d/%d (%s) -> %s%s", index + 1, len(keys), f"breed {fold}" if isinstance(fold, str) else
                 f"index % {args.folds} == {fold}", config.out, " (resuming)" if config.resume else "")
        fit(config, progress=progress)
        samples = fold_samples(args, fold)
        segmenter = _fold_model(Path(config.out), args.device)
        evaluate(segmenter, samples, batch_size=args.batch_size, border_is_pet=config.border_is_pet,
                 progress=progress, label=f"fold {fold}", into=pooled)
        fold_of.update({s.name: fold for s in samples})
    report = {"folds": len(keys), "by_breed": bool(args.by_breed), "limit": args.limit,
              "data_path": str(args.data_path),
              "config": config_from_args(args).to_dict(),
              **pooled.report(args.worst), "fold_of": fold_of}
    _write_json(report, root / "cv_report.json")
    _draw_worst(report, args, root)
    return report


def _fold_model(folder: Path, device: str) -> Segmenter:
    """A fold's model at the end of its schedule, in fp32, scoring as the service serves (small blobs dropped).

    Not ``best.pt``: that epoch was picked by its Dice on this very fold, and scoring it there would flatter the
    recipe by the luck of the pick (a point or more on folds of 60 photos)."""
    segmenter = Segmenter.from_file(folder / "last.pt", device=device, precision="fp32")
    segmenter.min_blob_ratio = DEFAULT_MIN_BLOB_RATIO
    return segmenter


def _draw_worst(report: dict, args, root: Path) -> None:  # noqa: ANN001
    """The worst images, each predicted by the fold model that never saw it."""
    samples = {s.name: s for split in ("train", "valid") for s in list_split(Path(args.data_path), split, args.folds, 0)}
    models: dict[int | str, Segmenter] = {}
    rows = []
    for row in report["worst"]:
        fold = report["fold_of"][str(row["name"])]
        if fold not in models:
            models[fold] = _fold_model(fold_dir(root, fold), args.device)
        rows.append((samples[str(row["name"])], float(row["dice"]), models[fold]))
    draw_worst(rows, root / "cv_worst.png", report["config"]["border_is_pet"],
               title=f"{'leave-one-breed-out' if args.by_breed else f'{args.folds}-fold'} CV: worst held-out images")


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if args.holdout_breed:
        parser.error("petseg-cv picks the held-out breed of each fold itself: use --by-breed")
    if args.fold != 0:
        parser.error("petseg-cv trains and scores every fold itself; --fold picks one fold in petseg-train")
    if args.model or args.init_weights:
        parser.error("petseg-cv resumes each fold from OUT/foldI/last.pt by itself; --model and --init-weights "
                     "(weights trained on these images would leak into the held-out folds) are not accepted")
    setup_logging(args.verbose)

    def run() -> int:
        check_can_write(args.out or f"runs/cv-{args.net}", folder=True)  # before the first fold trains
        report = run_cross_validation(args, progress=sys.stderr.isatty())
        ignored = report["border_ignored"]
        kind = "leave-one-breed-out" if args.by_breed else f"{args.folds}-fold"
        print(f"{kind} CV over {report['images']} images: Dice {report['dice']:.4f} "
              f"(border ignored {ignored['dice']:.4f}), under 0.7: {report['below_0.7']:.1%}")
        for breed, row in report["per_breed"].items():
            print(f"  {breed}: Dice {row['dice']:.4f} over {row['images']} images, under 0.7: {row['below_0.7']:.1%}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
