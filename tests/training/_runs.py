"""The tiny training recipe shared by the CLI and torchrun tests: one optimizer step per epoch (8 images,
batches of 8), a few seconds per epoch on a 2-core CPU; the per-step cost is mostly fixed (31M parameters)."""

from __future__ import annotations

from pathlib import Path

FAST = ["--image-size", "32", "--limit", "8", "-b", "8", "--workers", "0", "--device", "cpu", "--seed", "1"]
RECIPE = [
    *FAST,
    "-n",
    "unet",
    "-e",
    "2",
    "-lr",
    "3e-3",
]  # the run both test_train_cli and test_distributed use


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data_path", str(data), "--out", str(out), *FAST, *extra]


def train(data: Path, out: Path, *extra: str) -> int:
    from training.train import main

    return main(train_args(data, out, *extra))
