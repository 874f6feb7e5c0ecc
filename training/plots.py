"""Pictures people would rather look at than read: learning curves and image | truth | prediction grids."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.imaging.overlay import tint  # noqa: E402

__all__ = ["plot_history", "save_comparison_grid"]


def plot_history(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and Dice per epoch, train vs valid, side by side."""
    epochs = history.get("epoch", list(range(1, len(history.get("train_loss", [])) + 1)))
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history.get("train_loss", []), label="train")
    ax_loss.plot(epochs, history.get("val_loss", []), label="valid")
    for key, values in history.items():  # a labelled + teacher-labelled mix: each source's training loss
        if key.startswith("train_loss_") and len(values) == len(epochs):
            ax_loss.plot(epochs, values, label=f"train, {key[len('train_loss_'):]} photos", linestyle="--")
    ax_loss.set(title="loss (BCE + Dice)", xlabel="epoch")
    ax_dice.plot(epochs, history.get("train_dice", []), label="train")
    trained = history.get("val_dice_trained")  # runs with a weight average (--ema)
    ax_dice.plot(epochs, history.get("val_dice", []), label="valid (weight average)" if trained else "valid")
    if trained and len(trained) == len(epochs):
        ax_dice.plot(epochs, trained, label="valid (trained weights)", alpha=0.6)
    ax_dice.set(title="Dice (mean per image)", xlabel="epoch", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_comparison_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]], path: Path,
                         title: str | None = None, labels: tuple[str, str] = ("ground truth", "prediction")) -> Path:
    """One row per image: image | ground truth | prediction overlay. ``rows``: (name, rgb, truth|None, pred);
    ``labels`` names the last two columns."""
    cols = 3
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 2.6 * len(rows)), squeeze=False)
    for r, (name, image, truth, pred) in enumerate(rows):
        axes[r][0].imshow(image)
        axes[r][0].set_title(name, fontsize=8)
        if truth is not None:
            axes[r][1].imshow(truth, cmap="gray", vmin=0, vmax=1)
            axes[r][1].set_title(labels[0], fontsize=8)
        axes[r][2].imshow(tint(image, pred))
        axes[r][2].set_title(labels[1], fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98) if title else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
