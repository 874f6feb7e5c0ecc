"""Checkpoint files: one ``torch.save`` dict of tensors and plain values, written atomically, read safely.

Every read goes through ``torch.load(..., weights_only=True)``, which refuses to execute pickled code, so a
malicious checkpoint is rejected instead of run. Writes go to a temporary file in the same folder, are fsynced and
then renamed over the target, so a crash mid-write leaves the previous file intact.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.atomic_files import write_atomically
from models.nets.registry import UnknownArchitectureError, build_model, canonical_arch_name

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "file_sha256",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "petseg-checkpoint/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe, not ours, or for another architecture."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds. ``training_state`` (optimizer, scheduler, scaler, history) is optional."""

    arch: str
    model_state: dict[str, torch.Tensor]
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    border_is_pet: bool = True
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    training_state: dict[str, Any] | None = None
    card: dict[str, Any] = field(default_factory=dict)
    # int8 activation ranges measured on calibration photos (models.engine.quantize.Int8Calibration.to_dict()), so that
    # int8 can be served without the photos; empty when none were measured.
    int8_calibration: dict[str, str] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        """Instantiate the architecture and load the weights (cast to fp32 if stored in half precision)."""
        model = build_model(self.arch)
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.model_state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit architecture {self.arch!r}: {_first_line(exc)}") from None
        return model

    def weights_digest(self) -> str:
        """sha256 of the architecture, input size and weights (as fp32): what identifies the model whatever the
        file around it (card, metrics, int8 ranges) holds."""
        digest = hashlib.sha256(f"{self.arch}:{self.image_size}".encode())
        for name, tensor in sorted(self.model_state.items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "model_state": self.model_state,
            "image_size": self.image_size,
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "border_is_pet": self.border_is_pet,
            "epoch": self.epoch,
            "metrics": dict(self.metrics),
            "config": dict(self.config),
            "created_at": self.created_at,
            "training_state": self.training_state,
            "card": dict(self.card),
            "int8_calibration": dict(self.int8_calibration),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "checkpoint") -> Checkpoint:
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source} is not a petseg checkpoint (expected format {CHECKPOINT_FORMAT!r})")
        try:
            arch = canonical_arch_name(str(raw["arch"]))
            norm = raw.get("normalization") or {}
            checkpoint = cls(
                arch=arch,
                model_state=raw["model_state"],
                image_size=int(raw["image_size"]),
                mean=tuple(norm.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
                std=tuple(norm.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
                border_is_pet=bool(raw.get("border_is_pet", True)),
                epoch=int(raw.get("epoch", 0)),
                metrics=dict(raw.get("metrics") or {}),
                config=dict(raw.get("config") or {}),
                created_at=str(raw.get("created_at", "")),
                training_state=raw.get("training_state"),
                card=dict(raw.get("card") or {}),
                int8_calibration=dict(raw.get("int8_calibration") or {}),
            )
        except (KeyError, TypeError, ValueError, UnknownArchitectureError) as exc:
            raise CheckpointError(f"{source} is malformed: {exc}") from None
        if checkpoint.image_size < 1:
            raise CheckpointError(f"{source} is malformed: image_size {checkpoint.image_size} must be >= 1")
        return checkpoint

    def half(self) -> Checkpoint:
        """A copy with fp16 weights and no training state: half the size, for shipping."""
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.model_state.items()}
        copy = Checkpoint(**{**self.__dict__, "model_state": state, "training_state": None})
        return copy


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write atomically and durably: temp file in the target folder, fsync, rename."""
    return write_atomically(path, lambda handle: torch.save(checkpoint.to_dict(), handle), durable=True)


def load_checkpoint(path: str | os.PathLike[str], expected_arch: str | None = None) -> Checkpoint:
    """Read a checkpoint without executing pickled code; optionally insist on an architecture."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except KeyError:  # torch's reader takes a file that is no zip archive for its old format: a bad magic number
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint file") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    checkpoint = Checkpoint.from_dict(raw, source=str(path))
    if expected_arch is not None and canonical_arch_name(expected_arch) != checkpoint.arch:
        raise CheckpointError(
            f"checkpoint {path} holds a {checkpoint.arch!r} model, not {canonical_arch_name(expected_arch)!r}"
        )
    return checkpoint


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
