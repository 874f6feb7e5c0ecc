"""Turn a training checkpoint into a shippable one: weights only (optionally fp16), plus model-card facts.

    python -m training.export --model runs/default/best.pt --out models/weights/default.pt --half \\
        --card training_data="Oxford-IIIT Pet sample: 3 breeds, 270 train images" licence="CC BY-SA 4.0"
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models.checkpoint import load_checkpoint, save_checkpoint
from training.cli import run_cli, setup_logging

log = logging.getLogger("training.export")


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
    p.add_argument("--out", required=True, help="where to write the exported checkpoint")
    p.add_argument("--half", action="store_true", help="store weights in fp16 (half the size; loaded as fp32)")
    p.add_argument("--card", nargs="*", default=[], metavar="KEY=VALUE", help="model-card facts to embed")
    args = p.parse_args(argv)
    setup_logging()

    def run() -> int:
        checkpoint = load_checkpoint(args.model)
        exported = checkpoint.half() if args.half else checkpoint
        exported.training_state = None
        exported.card = {**exported.card, **parse_card(args.card)}
        path = save_checkpoint(exported, args.out)
        log.info("exported %s (epoch %d, val Dice %.4f) to %s: %.1f MB", checkpoint.arch, checkpoint.epoch,
                 checkpoint.metrics.get("val_dice", float("nan")), path, path.stat().st_size / 1e6)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
