"""Score a checkpoint on a split at each image's original resolution: Dice and IoU, per image and pooled.

    python -m training.evaluate --model runs/unet/best.pt --data_path dataset/oxford-iiit-pet --split test
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from models.inference import Segmenter
from training.cli import add_common_flags, add_inference_flags, compile_mode_for, run_cli, setup_logging
from training.data import SPLITS, Sample, list_split, load_sample
from training.metrics import SegmentationMetrics

log = logging.getLogger("training.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petseg-evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("--model", required=True, help="checkpoint to evaluate")
    p.add_argument("--net", "-n", default=None, help="expected architecture (checked against the checkpoint)")
    p.add_argument("--split", choices=SPLITS, default="test")
    add_inference_flags(p)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--border", choices=("checkpoint", "pet", "background"), default="checkpoint",
                   help="what trimap border pixels count as (default: as the model was trained)")
    p.add_argument("--worst", type=int, default=10, help="how many of the worst images to list")
    p.add_argument("--out", default=None, help="JSON report path (default: next to the checkpoint)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    return p


def evaluate(segmenter: Segmenter, samples: Sequence[Sample], *, batch_size: int = 8, threshold: float = 0.5,
             border_is_pet: bool = True, progress: bool = True, label: str = "") -> SegmentationMetrics:
    """Predict every sample at full size and score it against its trimap-derived mask."""
    metrics = SegmentationMetrics()
    for start in tqdm(range(0, len(samples), batch_size), desc=f"evaluate {label}".strip(), unit="batch",
                      disable=not progress):
        chunk = samples[start:start + batch_size]
        loaded = [load_sample(s, border_is_pet, None) for s in chunk]
        probs = segmenter.predict_batch([image for image, _ in loaded])
        for sample, (_, mask), prob in zip(chunk, loaded, probs, strict=True):
            metrics.update(torch.from_numpy(prob > threshold)[None], torch.from_numpy(mask > 0)[None], [sample.name])
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        samples = list_split(Path(args.data_path), args.split)[: args.limit]
        segmenter = Segmenter.from_file(args.model, device=args.device, precision=args.precision,
                                        compile=compile_mode_for(args.compile, len(samples)), allow_untrained=True)
        segmenter.warmup((min(args.batch_size, max(len(samples), 1)),))
        if args.net:
            from models.checkpoint import load_checkpoint

            load_checkpoint(args.model, expected_arch=args.net)
        border = segmenter.checkpoint.border_is_pet if args.border == "checkpoint" else args.border == "pet"
        metrics = evaluate(segmenter, samples, batch_size=args.batch_size, threshold=args.threshold,
                           border_is_pet=border, progress=sys.stderr.isatty(), label=args.split)
        summary = metrics.summary()
        report = {"checkpoint": str(args.model), "arch": segmenter.info.arch, "split": args.split,
                  "data_path": str(args.data_path), "threshold": args.threshold, "border_is_pet": border,
                  "precision": segmenter.precision, **summary, "worst": metrics.worst(args.worst),
                  "per_image": dict(zip(metrics.names, metrics.dice, strict=True))}
        out = Path(args.out) if args.out else Path(args.model).with_name(f"eval_{args.split}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        print(f"{args.split}: {summary['images']} images  Dice {summary['dice']:.4f} (micro {summary['dice_micro']:.4f})"
              f"  IoU {summary['iou']:.4f} (micro {summary['iou_micro']:.4f})")
        for row in report["worst"][:5]:
            print(f"  worst: {row['name']}  Dice {row['dice']:.3f}")
        log.info("report written to %s", out)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
