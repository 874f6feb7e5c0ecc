"""One typed config per training run, defaulting to the lab report's recipe; saved inside every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SCHEDULERS", "TrainConfig"]

SCHEDULERS = ("none", "cosine")
MAX_TEACHER_GROW = 0.05  # a twentieth of the side: past any border band, a slip of the finger


@dataclass
class TrainConfig:
    data_path: str = "dataset/oxford-iiit-pet"
    net: str = "unet"
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_epochs: float = 0.0
    image_size: int = 256
    augment: str = "report"
    underexpose: float = 0.0  # the share of training photos darkened one to 1.5 stops (training.transforms)
    border_is_pet: bool = True
    ignore_border: bool = False  # the border band is left out of the loss (the checkpoint still scores it as pet)
    clip_grad_norm: float = 1.0
    amp: str = "auto"
    channels_last: bool = True
    device: str = "auto"
    workers: int = 2
    seed: int = 42
    out: str = "runs/unet"
    resume: str | None = None
    save_every: float = 0.0  # minutes between saves of last.pt part-way through an epoch; 0 = at each epoch's end
    cache: bool = True
    skip_bad: bool = False
    limit: int | None = None
    folds: int = 10
    fold: int | None = 0  # None: no fold held out (every trainval image trains; no validation)
    holdout_breed: str | None = None  # leave-one-breed-out: this breed is the valid split (folds are ignored)
    init_weights: str | None = None
    encoder_weights: str | None = None
    ema_decay: float = 0.0
    ema_warmup: bool = True  # see training.ema
    # teacher-labelled photos (training.pseudo_data); None: the labelled photos alone
    teacher_images: str | None = None
    teacher_labels: str | None = None
    teacher_confidence: float = 0.9  # teacher pixels between 1 - c and c are left out of the loss
    teacher_edge_band: int = 2  # pixels each side of the teacher's outline left out (trimaps teach the border)
    teacher_grow: float = 0.0  # the teacher's pet region grown by this share of the label's long side
    teacher_weight: float = 1.0  # a teacher-labelled image's weight in the loss, a labelled image's being 1
    labelled_repeat: int = 1  # the labelled photos appear this many times an epoch beside the teacher's
    teacher_holdout: int = 20  # 1 in N teacher-labelled photos (by a hash of the name) never trains; 0 = none

    def check(self) -> None:
        """``ValueError`` for options that cannot go together; run before any data is read."""
        if (self.teacher_images is None) != (self.teacher_labels is None):
            raise ValueError("--teacher-images and --teacher-labels go together")
        if self.teacher_labels is not None and self.augment == "copy-paste":
            raise ValueError("--augment copy-paste cuts pets along two-valued masks; teacher labels have "
                             "unsure pixels: use --augment strong with --teacher-labels")
        if not 0.5 <= self.teacher_confidence <= 1.0:
            raise ValueError(f"--teacher-confidence must be in [0.5, 1], not {self.teacher_confidence}")
        if not 0.0 <= self.teacher_grow <= MAX_TEACHER_GROW:
            raise ValueError(f"--teacher-grow must be in [0, {MAX_TEACHER_GROW}], not {self.teacher_grow}")
        if not 0.0 <= self.underexpose <= 1.0:
            raise ValueError(f"--underexpose must be in [0, 1], not {self.underexpose}")
        if self.save_every < 0:
            raise ValueError(f"--save-every must be >= 0 minutes, not {self.save_every}")
        if self.ignore_border and self.augment == "copy-paste":
            raise ValueError("--augment copy-paste cuts pets out along two-valued masks: use --border pet or "
                             "background")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
