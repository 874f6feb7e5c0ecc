"""The parts of a training run that test_train_cli.py only meets whole: the learning-rate schedule, the epoch's
numbers, resuming the optimizer and the weight average, the history file, seeding."""
from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.checkpoint import Checkpoint, CheckpointError
from training import fit
from training.config import TrainConfig
from training.distributed import DistInfo
from training.ema import WeightAverage
from training.loop import EpochResult
from training.metrics import SegmentationMetrics


def learning_rates(config: TrainConfig, steps_per_epoch: int, steps: int) -> list[float]:
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = fit._make_scheduler(config, optimizer, steps_per_epoch)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_no_scheduler_keeps_the_reports_constant_rate_and_an_unknown_one_is_refused() -> None:
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    assert fit._make_scheduler(TrainConfig(scheduler="none"), optimizer, 10) is None
    with pytest.raises(ValueError) as info:
        fit._make_scheduler(TrainConfig(scheduler="step"), optimizer, 10)
    assert str(info.value) == "unknown scheduler 'step'; expected one of none, cosine"


def test_cosine_warms_up_linearly_then_decays_to_a_hundredth() -> None:
    config = TrainConfig(scheduler="cosine", epochs=2, warmup_epochs=0.4)  # 2 warm-up steps of 10
    rates = learning_rates(config, steps_per_epoch=5, steps=12)
    cosine = [0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 2) / 8))) for step in range(2, 12)]
    assert rates == pytest.approx([0.5, 1.0, *cosine])
    assert rates[-1] == pytest.approx(0.01) and rates[6] == pytest.approx(0.505)  # half way: half the rate


def test_cosine_without_warm_up_starts_at_the_full_rate() -> None:
    rates = learning_rates(TrainConfig(scheduler="cosine", epochs=1), steps_per_epoch=4, steps=5)
    assert rates == pytest.approx([0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)])
    assert learning_rates(TrainConfig(scheduler="cosine", epochs=1), steps_per_epoch=0, steps=2)[0] == 1.0


def test_a_single_step_of_cosine_decays_in_full() -> None:
    """The shortest schedules: one step in all, and one step after a one-step warm-up, each end at a hundredth."""
    assert learning_rates(TrainConfig(scheduler="cosine", epochs=1), steps_per_epoch=1, steps=2) == pytest.approx(
        [1.0, 0.01])
    warmed = TrainConfig(scheduler="cosine", epochs=2, warmup_epochs=1)
    assert learning_rates(warmed, steps_per_epoch=1, steps=3) == pytest.approx([1.0, 1.0, 0.01])


def scored(dice: list[float], loss: float) -> EpochResult:
    metrics = SegmentationMetrics()
    metrics.names += [f"a_{i}" for i in range(len(dice))]
    metrics.dice += dice
    metrics.iou += [d / 2 for d in dice]
    metrics.intersection, metrics.pred_pixels, metrics.target_pixels = 3.0, 4.0, 4.0
    return EpochResult(loss, metrics)


def test_the_epochs_numbers_and_nan_where_nothing_is_held_out() -> None:
    both = fit._epoch_metrics(scored([0.5, 0.7], 0.3), scored([0.8, 0.9], 0.2))
    assert both == pytest.approx({"train_loss": 0.3, "train_dice": 0.6, "val_loss": 0.2, "val_dice": 0.85,
                                  "val_iou": 0.425, "val_dice_micro": 0.75, "val_iou_micro": 0.6})
    alone = fit._epoch_metrics(scored([0.5], 0.3), None)
    assert (alone["train_loss"], alone["train_dice"]) == (0.3, 0.5)
    assert all(math.isnan(alone[key]) for key in ("val_loss", "val_dice", "val_iou", "val_dice_micro",
                                                  "val_iou_micro"))


def test_resuming_restores_the_optimizer_schedule_and_scaler() -> None:
    model = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler.step()

    class Scaler:
        def __init__(self) -> None:
            self.loaded: list = []

        def load_state_dict(self, state: dict) -> None:
            self.loaded.append(state)

    fresh = torch.optim.Adam(model.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh, lambda step: 0.5 ** step)
    scaler = Scaler()
    fit._restore({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "scaler": {"scale": 1024.0}}, fresh, fresh_scheduler, scaler)  # type: ignore[arg-type]
    assert fresh.state_dict()["state"][0]["step"] == 1 and fresh_scheduler.last_epoch == 1
    assert scaler.loaded == [{"scale": 1024.0}]
    untouched = Scaler()
    fit._restore({"optimizer": None, "scheduler": None, "scaler": None}, fresh, None, untouched)  # type: ignore[arg-type]
    assert untouched.loaded == []  # a run without fp16 saved no scaler state
    # a run saved with a schedule goes on without one when this run asks for none
    fit._restore({"optimizer": None, "scheduler": scheduler.state_dict(), "scaler": None}, fresh, None, None)


def test_an_optimizer_state_that_does_not_fit_is_a_checkpoint_error() -> None:
    other = torch.optim.Adam(nn.Linear(5, 5).parameters())
    state = {"optimizer": {"state": {}, "param_groups": [{"params": [0, 1, 2]}]}}
    with pytest.raises(CheckpointError, match="^cannot resume the optimizer state: "):
        fit._restore(state, other, None, None)


def test_a_run_kept_with_an_average_resumes_its_trained_weights_and_its_average(
        caplog: pytest.LogCaptureFixture) -> None:
    trained, averaged = nn.Linear(2, 1), nn.Linear(2, 1)
    resume = Checkpoint(arch="unet", model_state=averaged.state_dict(), image_size=64,
                        training_state={"live_model": trained.state_dict(), "ema_updates": 7, "ema_warmup": True})
    core = nn.Linear(2, 1)
    average = WeightAverage(core, 0.9, warmup=False)
    fit._restore_weight_average(resume, core, average, "last.pt")
    assert torch.equal(core.weight, trained.weight) and torch.equal(average.module.weight, averaged.weight)
    assert (average.updates, average.warmup) == (7, True)
    older = Checkpoint(arch="unet", model_state=averaged.state_dict(), image_size=64,
                       training_state={"live_model": trained.state_dict()})  # before the warm-up existed
    fit._restore_weight_average(older, core, average, "old.pt")
    assert (average.updates, average.warmup) == (1, False)
    core = nn.Linear(2, 1)
    with caplog.at_level(logging.WARNING, logger="training.fit"):
        fit._restore_weight_average(resume, core, None, "last.pt")
    assert torch.equal(core.weight, trained.weight)
    assert caplog.messages == ["last.pt kept a weight average (EMA); resuming with --ema 0 goes on from the trained "
                               "weights and drops the average"]


def test_a_run_without_an_average_resumes_as_it_is() -> None:
    core = nn.Linear(2, 1)
    before = core.weight.clone()
    fit._restore_weight_average(Checkpoint(arch="unet", model_state={}, image_size=64), core, None, "x.pt")
    assert torch.equal(core.weight, before)


def test_the_history_is_replaced_whole_and_drawn(tmp_path: Path) -> None:
    history = {key: [0.5, 0.25] for key in fit.HISTORY_KEYS} | {"epoch": [1.0, 2.0]}
    fit._write_history(history, tmp_path)
    assert (tmp_path / "history.json").read_text() == json.dumps(history, indent=1)
    assert (tmp_path / "curves.png").stat().st_size > 0 and not (tmp_path / "history.json.tmp").exists()


def test_encoder_weights_need_a_network_with_an_encoder() -> None:
    with pytest.raises(ValueError) as info:
        fit._load_encoder_weights(nn.Linear(1, 1), TrainConfig(net="unet", encoder_weights="imagenet"), False)
    assert str(info.value) == "--encoder-weights needs a model with a ResNet-34 encoder (resnet34_unet), not unet"


def test_seeding_repeats_every_generator() -> None:
    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    fit.seed_everything(5)
    first = draw()
    fit.seed_everything(5)
    assert draw() == first
    fit.seed_everything(6)
    assert draw() != first
    base = 2**32 + 2**31 + 11  # torch's worker seeds are 64-bit; numpy takes 32
    torch.manual_seed(base)
    fit._seed_worker(0)
    worker = (random.random(), float(np.random.rand()))
    torch.manual_seed(base)
    fit._seed_worker(3)
    assert (random.random(), float(np.random.rand())) == worker
    random.seed(2**31 + 11)
    np.random.seed(2**31 + 11)
    assert (random.random(), float(np.random.rand())) == worker


class RecordedTeacherSet:
    """Stands in for TeacherLabelledDataset: records what the run asks of it."""

    made: list[dict] = []

    def __init__(self, images: str, labels: str, **kwargs: object) -> None:
        RecordedTeacherSet.made.append({"images": images, "labels": labels, **kwargs})

    def __len__(self) -> int:
        return 5


def test_the_mix_repeats_the_labelled_photos_and_holds_one_teacher_photo_in_n_out(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from training.pseudo_data import SOURCE_LABELLED, is_teacher_holdout

    monkeypatch.setattr(fit, "TeacherLabelledDataset", RecordedTeacherSet)
    RecordedTeacherSet.made.clear()
    (tmp_path / "labels").mkdir()
    names = [f"pug_{i}" for i in range(40)]
    for name in names:
        (tmp_path / "labels" / f"{name}.png").write_bytes(b"")
    (tmp_path / "labels" / "notes.txt").write_text("not a label")
    settings = {"teacher_images": str(tmp_path / "photos"), "teacher_labels": str(tmp_path / "labels"),
                "image_size": 48, "teacher_confidence": 0.8, "teacher_edge_band": 3, "teacher_grow": 0.05,
                "augment": "strong", "labelled_repeat": 3}
    labelled = [{"name": "a"}, {"name": "b"}]
    with caplog.at_level(logging.INFO, logger="training.fit"):
        mix = fit._with_teacher_labels(labelled, TrainConfig(teacher_holdout=4, teacher_weight=0.5, **settings), False)
    assert caplog.messages == ["mix: 2 labelled photos x 3 + 5 teacher-labelled photos (loss weight 0.5; pet grown by "
                               "0.05 of the side; pixels under 0.80 confidence and 3 px each side of the teacher's "
                               "outline left out)"]
    (made,) = RecordedTeacherSet.made
    assert made["names"] == {n for n in names if not is_teacher_holdout(n, 4)} and len(made["names"]) < 40
    assert (made["images"], made["labels"], made["image_size"], made["confidence"], made["edge_band"], made["grow"],
            made["progress"]) == (str(tmp_path / "photos"), str(tmp_path / "labels"), 48, 0.8, 3, 0.05, False)
    assert callable(made["transform"])
    assert len(mix.datasets) == 4 and len(mix) == 3 * 2 + 5
    assert all(part.dataset is labelled and part.source == SOURCE_LABELLED for part in mix.datasets[:3])
    assert isinstance(mix.datasets[3], RecordedTeacherSet)
    limited = fit._with_teacher_labels(labelled, TrainConfig(teacher_holdout=0, limit=2, **settings), True)
    assert RecordedTeacherSet.made[1]["names"] is None and RecordedTeacherSet.made[1]["progress"] is True
    assert list(limited.datasets[-1].indices) == [0, 1] and isinstance(limited.datasets[-1].dataset, RecordedTeacherSet)


@pytest.mark.parametrize("progress", [True, False])
def test_encoder_weights_are_read_with_a_progress_bar_only_when_asked(monkeypatch: pytest.MonkeyPatch,
                                                                     progress: bool) -> None:
    from models import build_model

    model = build_model("resnet34_unet")
    reads: list[tuple[str, bool]] = []

    def read(source: str, progress: bool) -> dict[str, torch.Tensor]:
        reads.append((source, progress))
        return dict(model.encoder.state_dict())

    monkeypatch.setattr(fit, "read_encoder_weights", read)
    fit._load_encoder_weights(model, TrainConfig(net="resnet34_unet", encoder_weights="imagenet"), progress)
    assert reads == [("imagenet", progress)]


def test_encoder_weights_from_a_file_go_into_the_resnet_encoder(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from models import build_model

    torch.manual_seed(1)
    source = build_model("resnet34_unet")
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pt")
    torch.manual_seed(2)
    model = build_model("resnet34_unet")
    with caplog.at_level(logging.INFO, logger="training.fit"):
        fit._load_encoder_weights(model, TrainConfig(net="resnet34_unet", encoder_weights=str(tmp_path / "encoder.pt")),
                                  False)
    for name, tensor in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name
    count = len(source.encoder.state_dict())
    assert f"encoder: {count} tensors loaded from {tmp_path / 'encoder.pt'}" in caplog.messages


class RunRecorder:
    """Stands in for the run itself (``_fit``) and for torchrun's process group, recording what ``fit`` hands
    them."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.runs: list[tuple] = []
        self.joined: list[torch.device] = []
        self.left: list[DistInfo] = []

    def run(self, *args: object) -> str:
        self.runs.append(args)
        return "result"

    def join(self, device: torch.device) -> DistInfo:
        self.joined.append(device)
        return self.info


def recorder(monkeypatch: pytest.MonkeyPatch, info: DistInfo = DistInfo()) -> RunRecorder:
    record = RunRecorder(info)
    monkeypatch.setattr(fit, "_fit", record.run)
    monkeypatch.setattr(fit, "init_distributed", record.join)
    monkeypatch.setattr(fit, "cleanup_distributed", record.left.append)
    monkeypatch.setattr("models.engine.runtime.cpu_supports_bf16", lambda: True)
    return record


def test_a_run_on_the_cpu_trains_in_fp32_unless_asked_and_shows_its_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    record = recorder(monkeypatch)
    config = TrainConfig(net="UNet", device="cpu", amp="auto")
    assert fit.fit(config) == "result"
    assert record.runs == [(config, torch.device("cpu"), "fp32", DistInfo(), True)]  # bf16 only when asked
    assert config.net == "unet" and record.joined == [torch.device("cpu")] and record.left == [DistInfo()]
    fit.fit(TrainConfig(device="cpu", amp="bf16"), progress=False)
    assert record.runs[1][2:] == ("bf16", DistInfo(), False)


def test_only_the_first_rank_shows_progress_and_every_rank_leaves_the_process_group(
        monkeypatch: pytest.MonkeyPatch) -> None:
    second = DistInfo(rank=1, world_size=2, local_rank=1)
    record = recorder(monkeypatch, second)
    fit.fit(TrainConfig(device="cpu", amp="fp32"))
    assert record.runs[0][1:] == (torch.device("cpu"), "fp32", second, False) and record.left == [second]

    def failing_run(*args: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(fit, "_fit", failing_run)
    with pytest.raises(RuntimeError, match="out of memory"):
        fit.fit(TrainConfig(device="cpu", amp="fp32"))
    assert record.left == [second, second]


def test_a_configuration_that_does_not_hold_is_refused_before_the_process_group_is_joined(
        monkeypatch: pytest.MonkeyPatch) -> None:
    record = recorder(monkeypatch)
    with pytest.raises(ValueError, match="^--teacher-images and --teacher-labels go together$"):
        fit.fit(TrainConfig(device="cpu", amp="fp32", teacher_images="photos"))
    assert record.joined == [] and record.runs == []
