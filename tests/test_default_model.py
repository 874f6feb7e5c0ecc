"""The embedded default model: it ships, loads safely, says what the card says, and really segments pets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.config import DEFAULT_CHECKPOINT, Settings
from models.checkpoint import CheckpointError, load_checkpoint
from models.engine.segmenter import Segmenter
from training.data import list_split, load_sample

CARD_KEYS = ("training_data", "train_images", "command", "training_time", "machine", "licence")
DICE_FLOOR = 0.80  # mean per-image Dice on a few real validation images; the model card reports the full split


def test_default_checkpoint_ships_and_loads_with_weights_only() -> None:
    assert DEFAULT_CHECKPOINT.is_file(), f"the embedded default model is missing: {DEFAULT_CHECKPOINT}"
    assert DEFAULT_CHECKPOINT.stat().st_size < 64 * 1024 * 1024
    raw = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    assert raw["format"] == "petseg-checkpoint/1"


def test_default_checkpoint_has_the_metadata_the_card_claims() -> None:
    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT)
    assert checkpoint.arch in ("unet", "resnet34_unet")
    assert checkpoint.epoch >= 1
    assert checkpoint.training_state is None  # shipped weights only
    assert 0.0 < checkpoint.metrics["val_dice"] <= 1.0
    assert all(checkpoint.card.get(key) for key in CARD_KEYS), checkpoint.card
    card_text = (Path(__file__).resolve().parents[1] / "docs" / "model-card.md").read_text()
    assert f"{checkpoint.metrics['val_dice']:.3f}" in card_text
    assert checkpoint.card["command"] in card_text


def test_default_model_segments_real_pets(sample_data: Path) -> None:
    segmenter = Segmenter.from_file(DEFAULT_CHECKPOINT, device="cpu")
    samples = list_split(sample_data, "valid")[:6]
    scores = []
    for sample in samples:
        image, truth = load_sample(sample, border_is_pet=True, size=None)
        mask = segmenter.predict(image) > 0.5
        truth = truth > 0
        scores.append(2 * np.count_nonzero(mask & truth) / (np.count_nonzero(mask) + np.count_nonzero(truth)))
    assert float(np.mean(scores)) > DICE_FLOOR, scores


def test_default_settings_serve_the_embedded_model() -> None:
    assert Settings(_env_file=None).checkpoint == DEFAULT_CHECKPOINT


def test_service_refuses_untrained_weights(tmp_path: Path) -> None:
    from tests.factories import make_checkpoint

    untrained = make_checkpoint(tmp_path / "random.pt", epoch=0)
    with pytest.raises(CheckpointError, match="untrained"):
        Segmenter.from_file(untrained, device="cpu")
