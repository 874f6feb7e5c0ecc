"""Score a checkpoint on a split at each image's original resolution: Dice and IoU, per image and pooled.

    python -m training.evaluate --model runs/unet/best.pt --data_path dataset/oxford-iiit-pet --split test
    python -m training.evaluate --model runs/cv/fold2/best.pt --data_path ... --split valid --folds 5 --fold 2
    python -m training.evaluate --model a.pt --ensemble b.pt --data_path ... --split valid   # mean of both maps

Both conventions for the trimap's border band are reported: as the model was trained (the report counts it as
pet) and ignored (border pixels count for neither side: the score against a tight outline). So are the share of
images under Dice 0.7 (the failures a user sees) and the mean per breed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.atomic_files import write_atomically
from models.engine.ensemble import EnsembleSegmenter
from models.engine.segmenter import SegmenterBase
from models.imaging.refine import guided_upsample
from training.cli import (
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
from training.copy_paste import least_pet_window
from training.data import SPLITS, Sample, list_split, load_pair
from training.images import TRIMAP_BACKGROUND, TRIMAP_BORDER, trimap_to_mask
from training.metrics import SegmentationMetrics, breed_of
from training.plots import save_comparison_grid

log = logging.getLogger("training.evaluate")
REFINEMENTS = ("none", "guided")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petseg-evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("--model", default=None, help="checkpoint to evaluate ('default' = the embedded model)")
    p.add_argument("--labels", default=None, metavar="DIR",
                   help="instead of a model, score a folder of label PNGs (petseg-pseudolabel's NAME.png, pet where "
                        ">= 128) against the split's trimaps: how good is a teacher on labelled photos?")
    p.add_argument("--net", "-n", default=None, help="expected architecture (checked against the checkpoint)")
    p.add_argument("--split", choices=SPLITS, default="test", help="which split of the dataset to score")
    add_inference_flags(p)
    p.add_argument("--threshold", type=unit_interval, default=0.5, help="probability threshold in [0, 1]")
    p.add_argument("--border", choices=("checkpoint", "pet", "background"), default="checkpoint",
                   help="what trimap border pixels count as (default: as the model was trained)")
    p.add_argument("--worst", type=at_least(0), default=10, help="how many of the worst images to list")
    p.add_argument("--out", default=None,
                   help="JSON report path (default: eval_<split>.json in the working directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report at that path")
    p.add_argument("--limit", type=at_least(1), default=None, help="only the first N images")
    p.add_argument("--refine", choices=REFINEMENTS, default="none",
                   help="up-sampling of the probability map to the photo's size: bilinear (none) or the guided "
                        "filter that follows the photo's edges (guided)")
    p.add_argument("--background-crops", action="store_true",
                   help="also predict, for every photo, a window that holds no pet (the trimap's pet and border "
                        "excluded) and report how much of it is taken for a pet")
    p.add_argument("--worst-grid", default=None, metavar="PNG",
                   help="draw the --worst images (photo | ground truth | prediction) into this PNG")
    p.add_argument("--folds", type=int, default=10, help="cross-validation folds (see petseg-train --folds)")
    p.add_argument("--fold", type=int, default=0, help="with --split valid: the held-out fold")
    p.add_argument("--holdout-breed", default=None, metavar="BREED",
                   help="with --split valid: that breed's photos (petseg-train --holdout-breed)")
    teacher = p.add_argument_group("against a teacher (photos without trimaps, e.g. new breeds)")
    teacher.add_argument("--teacher-images", default=None, help="folder of teacher-labelled photos")
    teacher.add_argument("--teacher-labels", default=None,
                         help="their label PNGs (petseg-pseudolabel): score the model against the teacher on the "
                              "photos training held out, per breed, instead of against trimaps")
    teacher.add_argument("--teacher-holdout", type=at_least(1), default=20,
                         help="the 1-in-N share training held out (petseg-train --teacher-holdout)")
    teacher.add_argument("--edge-band", type=at_least(0), default=2,
                         help="pixels each side of the teacher's outline left out of the score")
    p.add_argument("--ensemble", action="append", default=[], metavar="CKPT",
                   help="average the probability maps of this checkpoint (repeatable) with --model's: do models "
                        "trained apart fail on the same photos? (one forward pass per model; a diagnostic)")
    return p


@dataclass
class Evaluation:
    """Per-image scores under both border conventions."""

    scored: SegmentationMetrics          # border as the model was trained (or as --border says)
    border_ignored: SegmentationMetrics  # border pixels excluded from prediction and ground truth

    @classmethod
    def empty(cls) -> Evaluation:
        return cls(SegmentationMetrics(), SegmentationMetrics())

    def report(self, worst: int = 10) -> dict[str, object]:
        return {**self.scored.summary(), "below_0.7": self.scored.share_below(0.7),
                "per_breed": self.scored.by_group(breed_of), "worst": self.scored.worst(worst),
                "per_image": dict(zip(self.scored.names, self.scored.dice, strict=True)),
                "border_ignored": {**self.border_ignored.summary(),
                                   "below_0.7": self.border_ignored.share_below(0.7),
                                   "per_breed": self.border_ignored.by_group(breed_of)}}


def evaluate(segmenter: SegmenterBase, samples: Sequence[Sample], *, batch_size: int = 8, threshold: float = 0.5,
             border_is_pet: bool = True, progress: bool = True, label: str = "",
             into: Evaluation | None = None, refine: str = "none") -> Evaluation:
    """Predict every sample at full size and score it against its trimap, under both border conventions
    (added to ``into`` when given, e.g. to pool the folds of a cross-validation)."""
    result = into if into is not None else Evaluation.empty()
    for start in tqdm(range(0, len(samples), batch_size), desc=f"evaluate {label}".strip(), unit="batch",
                      disable=not progress):
        chunk = samples[start:start + batch_size]
        loaded = [load_pair(s) for s in chunk]
        probs = _probabilities(segmenter, [image for image, _ in loaded], refine)
        for sample, (_, trimap), prob in zip(chunk, loaded, probs, strict=True):
            pred = torch.from_numpy(prob > threshold)[None]
            truth = torch.from_numpy(trimap_to_mask(trimap, border_is_pet) > 0)[None]
            result.scored.update(pred, truth, [sample.name])
            border = torch.from_numpy(trimap == TRIMAP_BORDER)[None]
            result.border_ignored.update(pred, truth, [sample.name], ignore=border)
    return result


def background_false_positives(segmenter: SegmenterBase, samples: Sequence[Sample], *, threshold: float = 0.5,
                               seed: int = 0) -> dict[str, float]:
    """Predict pet-free windows of the photos and measure the share of their pixels taken for a pet.

    A window is the one, of 16 random windows of 30-60% of the side, that overlaps the pet least; photos where
    every window touches the pet or its border are skipped. This isolates the failure users report first:
    furniture, cars and pavement taken for the animal."""
    rng = np.random.default_rng(seed)
    fractions = []
    for sample in samples:
        image, trimap = load_pair(sample)
        x, y, w, h = least_pet_window((trimap != TRIMAP_BACKGROUND).astype(np.uint8), rng, tries=16)
        if (trimap[y:y + h, x:x + w] != TRIMAP_BACKGROUND).any():
            continue
        prob = segmenter.predict(np.ascontiguousarray(image[y:y + h, x:x + w]))
        fractions.append(float((prob > threshold).mean()))
    if not fractions:
        return {"crops": 0, "pet_fraction": float("nan"), "crops_over_10pct": float("nan")}
    return {"crops": len(fractions), "pet_fraction": float(np.mean(fractions)),
            "crops_over_10pct": float(np.mean([f > 0.1 for f in fractions]))}


def draw_worst(rows: Sequence[tuple[Sample, float, SegmenterBase]], path: Path, border_is_pet: bool, title: str) -> None:
    """Photo | ground truth | prediction for each (sample, its Dice, the model that scored it)."""
    drawn = []
    for sample, dice, segmenter in rows:
        image, trimap = load_pair(sample)
        drawn.append((f"{sample.name}  Dice {dice:.3f}", image, trimap_to_mask(trimap, border_is_pet),
                      segmenter.predict(image) > 0.5))
    if drawn:
        save_comparison_grid(drawn, path, title=title)


def _probabilities(segmenter: SegmenterBase, images: list[np.ndarray], refine: str) -> list[np.ndarray]:
    """Probability maps at each photo's size, up-sampled as ``refine`` says."""
    if refine == "none":
        return segmenter.predict_batch(images)
    side = segmenter.image_size
    small = segmenter.predict_batch(images, [(side, side)] * len(images))
    return [guided_upsample(prob, image) for prob, image in zip(small, images, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.model is None) == (args.labels is None):
        parser.error("give --model CKPT (a model to evaluate) or --labels DIR (label PNGs to score), one of them")
    if args.model is not None:
        args.model = model_path(args.model)
    args.ensemble = [model_path(path) for path in args.ensemble]
    setup_logging(args.verbose)

    def run() -> int:
        if args.teacher_labels or args.teacher_images:
            return _against_teacher(args)
        if args.labels:
            return _score_labels(args)
        name = f"eval_{args.split}_ensemble.json" if args.ensemble else f"eval_{args.split}.json"
        out = report_path(args.out, name, args.overwrite)  # before minutes of work, not after
        samples = list_split(Path(args.data_path), args.split, args.folds, args.fold, args.holdout_breed)[: args.limit]
        segmenter = open_engine(args, args.model, len(samples))
        if args.ensemble:
            segmenter = EnsembleSegmenter([segmenter, *(open_engine(args, path, len(samples))
                                                        for path in args.ensemble)])
        segmenter.warmup((min(args.batch_size, max(len(samples), 1)),))
        if args.net:
            from models.checkpoint import load_checkpoint

            load_checkpoint(args.model, expected_arch=args.net)
        border = segmenter.checkpoint.border_is_pet if args.border == "checkpoint" else args.border == "pet"
        evaluation = evaluate(segmenter, samples, batch_size=args.batch_size, threshold=args.threshold,
                              border_is_pet=border, progress=sys.stderr.isatty(), label=args.split,
                              refine=args.refine)
        report = {"checkpoint": str(args.model), "arch": segmenter.info.arch, "split": args.split,
                  "data_path": str(args.data_path), "threshold": args.threshold, "border_is_pet": border,
                  "runtime": segmenter.runtime, "precision": segmenter.precision, "refine": args.refine,
                  "min_blob_ratio": args.min_blob_ratio, "ensemble": [str(path) for path in args.ensemble],
                  **evaluation.report(args.worst)}
        if args.background_crops:
            report["background_crops"] = background_false_positives(segmenter, samples, threshold=args.threshold)
        if args.worst_grid:
            by_name = {s.name: s for s in samples}
            draw_worst([(by_name[str(r["name"])], float(r["dice"]), segmenter) for r in report["worst"]],
                       Path(args.worst_grid), border, title=f"{args.split}: the {len(report['worst'])} worst images")
        write_report(out, report)
        _print_summary(args.split, report)
        log.info("report written to %s", out)
        return 0

    return run_cli(run)


def _print_summary(split: str, report: dict) -> None:
    ignored = report["border_ignored"]
    print(f"{split}: {report['images']} images  Dice {report['dice']:.4f} (micro {report['dice_micro']:.4f})"
          f"  IoU {report['iou']:.4f} (micro {report['iou_micro']:.4f})  under 0.7: {report['below_0.7']:.1%}")
    print(f"  border ignored: Dice {ignored['dice']:.4f}  under 0.7: {ignored['below_0.7']:.1%}")
    if "background_crops" in report:
        crops = report["background_crops"]
        print(f"  pet-free crops: {crops['crops']}, taken for a pet: {crops['pet_fraction']:.1%} of their pixels, "
              f"{crops['crops_over_10pct']:.1%} of them over 10%")
    for breed, row in report["per_breed"].items():
        print(f"  {breed}: Dice {row['dice']:.4f} over {row['images']} images, under 0.7: {row['below_0.7']:.1%}"
              f"; border ignored {ignored['per_breed'][breed]['dice']:.4f}")
    for row in report["worst"][:5]:
        print(f"  worst: {row['name']}  Dice {row['dice']:.3f}")


def report_path(requested: str | None, default_name: str, overwrite: bool) -> Path:
    """Where the report goes: ``--out``, else the working directory (never the install or the checkpoint's
    folder); checked before the work starts."""
    out = check_can_write(Path(requested) if requested else Path.cwd() / default_name, folder=False)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists: pass --overwrite to replace it, or another --out")
    return out


def write_report(out: Path, report: dict[str, object]) -> None:
    data = json.dumps(report, indent=1).encode()
    write_atomically(out, lambda handle: handle.write(data))


def evaluate_labels(samples: Sequence[Sample], labels: Path, *, border_is_pet: bool = True) -> Evaluation:
    """Score label PNGs (pet where >= 128, at each photo's size) against the samples' trimaps, under both border
    conventions. Samples without a label are left out."""
    from training.pseudo_data import read_soft_label

    result = Evaluation.empty()
    for sample in samples:
        path = labels / f"{sample.name}.png"
        if not path.exists():
            continue
        _, trimap = load_pair(sample)
        pred = read_soft_label(path) >= 0.5
        if pred.shape != trimap.shape:
            raise ValueError(f"{path} is {pred.shape[1]}x{pred.shape[0]}, its photo {trimap.shape[1]}x{trimap.shape[0]}")
        pred_t = torch.from_numpy(pred)[None]
        truth = torch.from_numpy(trimap_to_mask(trimap, border_is_pet) > 0)[None]
        result.scored.update(pred_t, truth, [sample.name])
        result.border_ignored.update(pred_t, truth, [sample.name], ignore=torch.from_numpy(trimap == TRIMAP_BORDER)[None])
    return result


def _score_labels(args: argparse.Namespace) -> int:
    labels = Path(args.labels)
    if not labels.is_dir():
        raise ValueError(f"--labels {labels} is not a folder")
    out = report_path(args.out, f"eval_labels_{args.split}.json", args.overwrite)
    samples = list_split(Path(args.data_path), args.split, args.folds, args.fold, args.holdout_breed)[: args.limit]
    border = args.border != "background"
    evaluation = evaluate_labels(samples, labels, border_is_pet=border)
    if not evaluation.scored.names:
        raise ValueError(f"no photo of the {args.split} split has a label in {labels}")
    report = {"labels": str(labels), "split": args.split, "data_path": str(args.data_path), "border_is_pet": border,
              **evaluation.report(args.worst)}
    record = labels / "teacher.json"
    if record.exists():
        report["teacher"] = json.loads(record.read_text()).get("teacher")
    write_report(out, report)
    _print_summary(args.split, report)
    return 0


def _against_teacher(args: argparse.Namespace) -> int:
    from training.pseudo_data import held_out_names
    from training.teacher_agreement import score_against_teacher, worst_per_breed_grid

    if not (args.teacher_labels and args.teacher_images):
        raise ValueError("--teacher-images and --teacher-labels go together")
    images, labels = Path(args.teacher_images), Path(args.teacher_labels)
    out = report_path(args.out, "eval_teacher.json", args.overwrite)
    names = held_out_names(labels, args.teacher_holdout)[: args.limit]
    if not names:
        raise ValueError(f"no held-out photo (1 in {args.teacher_holdout}) has a label in {labels}")
    segmenter = open_engine(args, args.model, len(names))
    metrics = score_against_teacher(segmenter, images, labels, names, threshold=args.threshold,
                                    edge_band=args.edge_band, progress=sys.stderr.isatty())
    report = {"checkpoint": str(args.model), "teacher_labels": str(labels), "teacher_holdout": args.teacher_holdout,
              "edge_band": args.edge_band, "threshold": args.threshold, **metrics.summary(),
              "below_0.7": metrics.share_below(0.7), "per_breed": metrics.by_group(breed_of),
              "worst": metrics.worst(args.worst), "per_image": dict(zip(metrics.names, metrics.dice, strict=True))}
    if args.worst_grid:
        worst_per_breed_grid(segmenter, metrics, images, labels, Path(args.worst_grid), args.threshold)
    write_report(out, report)
    print(f"against the teacher on {report['images']} held-out photos: Dice {report['dice']:.4f}  "
          f"under 0.7: {report['below_0.7']:.1%}")
    for breed, row in sorted(report["per_breed"].items(), key=lambda item: item[1]["dice"]):
        print(f"  {breed}: Dice {row['dice']:.4f} over {row['images']} photos, under 0.7: {row['below_0.7']:.1%}")
    log.info("report written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
