"""A training run called directly (``training.fit.fit``), each test its own short run of a tiny network on a tiny
synthetic dataset: what it writes, how it resumes, the weight average, no validation split, the schedule, a start from
another checkpoint's weights, the teacher-labelled mix. test_train_cli.py drives the same runs from the command
line; these pin the numbers a run records."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from models import ARCHITECTURES
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.factories import make_pet_dataset
from tests.training.test_teacher_mix import write_teacher_set
from training.config import TrainConfig
from training.fit import HISTORY_KEYS, TRAINED_DICE, fit


class TinyNet(nn.Module):
    """What these runs need from a network (weights, one logit per pixel) at a hundred-thousandth of the UNet's 31M
    parameters, whose fixed cost per step and per checkpoint would make each test ten times slower. No
    BatchNorm: its running statistics move even when the weights cannot, and the tie test needs a run that
    learns nothing."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(autouse=True)
def tiny_unet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ARCHITECTURES, "unet", TinyNet)


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    return make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=2)


def config(pets: Path, out: Path, **overrides: object) -> TrainConfig:
    settings = {"data_path": str(pets), "net": "unet", "epochs": 2, "batch_size": 4, "image_size": 32,
                "workers": 0, "device": "cpu", "amp": "fp32", "folds": 5, "fold": 0, "out": str(out),
                "augment": "none", **overrides}
    return TrainConfig(**settings)  # type: ignore[arg-type]


def adam_steps(checkpoint: Path) -> set[float]:
    return {float(s["step"]) for s in load_checkpoint(checkpoint).training_state["optimizer"]["state"].values()}


def test_a_run_records_each_epoch_and_keeps_its_best(pets: Path, tmp_path: Path) -> None:
    run = config(pets, tmp_path / "run")
    result = fit(run, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert result.history == history and list(history) == list(HISTORY_KEYS)
    assert history["epoch"] == [1.0, 2.0] and history["lr"] == [1e-3, 1e-3]
    assert all(len(values) == 2 for values in history.values()) and min(history["seconds"]) > 0
    assert result.last_epoch == 2 and result.out_dir == tmp_path / "run"
    best = max(range(2), key=lambda i: history["val_dice"][i])
    assert (result.best_epoch, result.best_dice) == (best + 1, history["val_dice"][best])
    last, kept = load_checkpoint(tmp_path / "run" / "last.pt"), load_checkpoint(tmp_path / "run" / "best.pt")
    assert (last.epoch, kept.epoch) == (2, best + 1)
    assert kept.metrics["val_dice"] == result.best_dice and last.metrics["train_loss"] == history["train_loss"][1]
    assert (last.arch, last.image_size, last.border_is_pet) == ("unet", 32, True)
    assert last.config == run.to_dict()
    state = last.training_state
    assert (state["best_dice"], state["best_epoch"]) == (result.best_dice, result.best_epoch)
    assert state["scheduler"] is None and state["scaler"] is None and state["history"] == history
    assert adam_steps(tmp_path / "run" / "last.pt") == {4.0}  # 8 training photos, batches of 4, 2 epochs
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_the_same_seed_trains_the_same_run(pets: Path, tmp_path: Path) -> None:
    """Seeds the weights as well as the shuffling: a learning rate of 1e-12 leaves each run's initial weights."""
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        history = fit(config(pets, tmp_path / name, epochs=1, seed=seed, learning_rate=1e-12), progress=False).history
        runs[name] = history["train_loss"], load_checkpoint(tmp_path / name / "last.pt").model_state
    key = next(key for key in runs["a"][1] if key.endswith("weight"))
    assert runs["a"][0] == runs["b"][0] and torch.equal(runs["a"][1][key], runs["b"][1][key])
    assert runs["a"][0] != runs["c"][0] and not torch.allclose(runs["a"][1][key], runs["c"][1][key])


def test_a_tie_keeps_the_earlier_best_epoch(pets: Path, tmp_path: Path) -> None:
    result = fit(config(pets, tmp_path / "run", learning_rate=1e-12), progress=False)  # nothing learns
    assert result.history["val_dice"][0] == result.history["val_dice"][1]
    assert result.best_epoch == 1 and load_checkpoint(tmp_path / "run" / "best.pt").epoch == 1


def test_a_resumed_run_goes_on_from_the_next_epoch(pets: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    first = fit(config(pets, tmp_path / "run", epochs=1), progress=False)
    last = tmp_path / "run" / "last.pt"
    with caplog.at_level(logging.INFO, logger="training.fit"):
        result = fit(config(pets, tmp_path / "run", epochs=2, resume=str(last)), progress=False)
    assert result.history["epoch"] == [1.0, 2.0] and result.history["train_loss"][0] == first.history["train_loss"][0]
    assert adam_steps(last) == {4.0} and load_checkpoint(last).epoch == 2
    assert f"resumed {last} at epoch 1 (best valid Dice {first.best_dice:.4f} at epoch 1)" in caplog.messages
    if result.history["val_dice"][1] <= first.best_dice:  # the best is still the first epoch, and stays
        assert (result.best_epoch, result.best_dice) == (1, first.best_dice)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="training.fit"):
        done = fit(config(pets, tmp_path / "run", epochs=2, resume=str(last)), progress=False)
    assert "nothing to do: the checkpoint already reached epoch 2 of 2" in caplog.messages
    assert done.last_epoch == 2 and adam_steps(last) == {4.0}


def test_a_resumed_run_trains_on_from_the_checkpoints_weights(pets: Path, tmp_path: Path) -> None:
    """Every weight is shifted by 0.25 before resuming: two Adam steps at 1e-3 keep that shift, and freshly
    initialised weights would not have it."""
    fit(config(pets, tmp_path / "run", epochs=1), progress=False)
    last = tmp_path / "run" / "last.pt"
    checkpoint = load_checkpoint(last)
    shifted = {name: tensor + 0.25 for name, tensor in checkpoint.model_state.items()}
    checkpoint.model_state = shifted
    save_checkpoint(checkpoint, last)
    fit(config(pets, tmp_path / "run", epochs=2, resume=str(last)), progress=False)
    resumed = load_checkpoint(last).model_state
    assert max(float((resumed[name] - shifted[name]).abs().max()) for name in shifted) < 0.01


def test_a_resumed_run_keeps_the_checkpoints_image_size(pets: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    fit(config(pets, tmp_path / "run", epochs=1), progress=False)
    resumed = config(pets, tmp_path / "run", epochs=2, image_size=64, resume=str(tmp_path / "run" / "last.pt"))
    with caplog.at_level(logging.WARNING, logger="training.fit"):
        fit(resumed, progress=False)
    assert "resuming at the checkpoint's image size 32 (not 64)" in caplog.messages
    assert resumed.image_size == 32 and load_checkpoint(tmp_path / "run" / "last.pt").image_size == 32


def test_without_a_validation_split_every_epoch_is_the_best(pets: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.fit"):
        result = fit(config(pets, tmp_path / "run", fold=None), progress=False)
    assert result.best_epoch == 2 and math.isnan(result.best_dice)
    assert all(math.isnan(v) for v in result.history["val_dice"]) and adam_steps(tmp_path / "run" / "last.pt") == {4.0}
    assert load_checkpoint(tmp_path / "run" / "best.pt").epoch == 2  # 10 training photos: 2 batches, 2 epochs
    assert "data: 10 train / 0 valid images from " + str(pets) in caplog.messages


def test_the_weight_average_is_what_is_saved_and_the_trained_weights_resume(pets: Path, tmp_path: Path) -> None:
    result = fit(config(pets, tmp_path / "run", epochs=1, ema_decay=0.5), progress=False)
    assert len(result.history[TRAINED_DICE]) == 1
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    state = last.training_state
    assert (state["ema_updates"], state["ema_decay"], state["ema_warmup"]) == (2, 0.5, True)
    name = next(iter(last.model_state))
    assert not torch.equal(last.model_state[name], state["live_model"][name])  # the average, not the trained
    resumed = fit(config(pets, tmp_path / "run", epochs=2, ema_decay=0.5, ema_warmup=False,
                         resume=str(tmp_path / "run" / "last.pt")), progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt").training_state
    assert (state["ema_updates"], state["ema_warmup"]) == (4, True)  # the checkpoint says how it was kept
    assert load_checkpoint(tmp_path / "run" / "last.pt").config["ema_warmup"] is True
    assert len(resumed.history[TRAINED_DICE]) == 2


def test_a_cosine_schedule_is_saved_and_decays(pets: Path, tmp_path: Path) -> None:
    result = fit(config(pets, tmp_path / "run", scheduler="cosine"), progress=False)
    assert result.history["lr"][1] < result.history["lr"][0] < 1e-3
    assert load_checkpoint(tmp_path / "run" / "last.pt").training_state["scheduler"]["last_epoch"] == 4


def test_a_run_can_start_from_another_checkpoints_weights(pets: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    fit(config(pets, tmp_path / "first", epochs=1), progress=False)
    start = load_checkpoint(tmp_path / "first" / "last.pt").model_state
    with caplog.at_level(logging.INFO, logger="training.fit"):
        fit(config(pets, tmp_path / "second", epochs=1, learning_rate=1e-12,
                   init_weights=str(tmp_path / "first" / "last.pt")), progress=False)
    assert f"starting from the weights of {tmp_path / 'first' / 'last.pt'} (unet, epoch 1)" in caplog.messages
    second = load_checkpoint(tmp_path / "second" / "last.pt")
    name = next(key for key in start if key.endswith("weight"))
    torch.testing.assert_close(second.model_state[name], start[name])
    assert second.epoch == 1  # a new run: its own epochs and optimizer
    with pytest.raises(CheckpointError):  # weights of another architecture than --net
        fit(config(pets, tmp_path / "third", net="resnet34_unet", init_weights=str(tmp_path / "first" / "last.pt")),
            progress=False)


def test_the_teacher_mix_logs_each_sources_loss(pets: Path, tmp_path: Path) -> None:
    images, labels = write_teacher_set(tmp_path / "teacher", count=6)
    result = fit(config(pets, tmp_path / "run", epochs=1, augment="strong", teacher_images=str(images),
                        teacher_labels=str(labels), teacher_holdout=0, teacher_weight=0.5), progress=False)
    assert len(result.history["train_loss_labelled"]) == len(result.history["train_loss_teacher"]) == 1


def test_data_a_run_cannot_use_is_refused_before_training(pets: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="copy-paste composites from the decoded cache: drop --no-cache"):
        fit(config(pets, tmp_path / "run", augment="copy-paste", cache=False), progress=False)
    one = make_pet_dataset(tmp_path / "one", n_trainval=1, n_test=1)  # its one photo is fold 0's
    with pytest.raises(ValueError, match=r"the train and valid splits need at least one image each \(got 0 and 1\)"):
        fit(config(one, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def first_epoch(history: dict[str, list[float]]) -> dict[str, float]:
    return {key: values[0] for key, values in history.items()}


def fit_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "training.fit"
            and not record.getMessage().startswith("data: ")]


@pytest.mark.parametrize(("warmup", "memory"), [(False, "from the first step"),
                                                (True, "reached after a warm-up from a short memory")])
def test_a_run_says_what_it_trains_and_how_each_epoch_went(pets: Path, tmp_path: Path, warmup: bool, memory: str,
                                                           caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([100.0, 102.25])  # a clock read as each epoch starts and ends
    monkeypatch.setattr("training.fit.time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="training.fit"):
        result = fit(config(pets, out, epochs=1, ema_decay=0.9, ema_warmup=warmup, channels_last=False,
                            weight_decay=1e-4), progress=False)
    h = first_epoch(result.history)
    assert fit_messages(caplog) == [
        f"training unet on cpu (fp32, channels_last=False) for epochs 1..1 -> {out}",
        f"weight average: EMA with decay 0.9 per step (about 10 steps, {memory}); validated and saved in place of "
        "the trained weights",
        f"epoch 1/1  train loss {h['train_loss']:.4f} dice {h['train_dice']:.4f} | valid loss {h['val_loss']:.4f} "
        f"dice {h['val_dice']:.4f} (trained weights {h[TRAINED_DICE]:.4f}) iou {h['val_iou']:.4f} | lr 1.00e-03 | "
        "2.2s  * best"]
    assert h["seconds"] == 2.25 and h["val_dice"] != h[TRAINED_DICE]  # the average is what is validated
    state = load_checkpoint(out / "last.pt").training_state
    assert state["ema_warmup"] is warmup and state["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4


def test_an_epoch_without_a_weight_average_has_one_valid_dice(pets: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.fit"):
        result = fit(config(pets, tmp_path / "run", epochs=1, border_is_pet=False), progress=False)
    h = first_epoch(result.history)
    assert fit_messages(caplog)[-1] == (
        f"epoch 1/1  train loss {h['train_loss']:.4f} dice {h['train_dice']:.4f} | valid loss {h['val_loss']:.4f} "
        f"dice {h['val_dice']:.4f} iou {h['val_iou']:.4f} | lr 1.00e-03 | {h['seconds']:.1f}s  * best")
    assert load_checkpoint(tmp_path / "run" / "last.pt").border_is_pet is False  # what the service will serve


def test_the_teacher_mix_names_each_sources_loss_in_the_epochs_line(pets: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    images, labels = write_teacher_set(tmp_path / "teacher", count=6)
    with caplog.at_level(logging.INFO, logger="training.fit"):
        result = fit(config(pets, tmp_path / "run", epochs=1, teacher_images=str(images), teacher_labels=str(labels),
                            teacher_holdout=0, fold=None), progress=False)
    h = first_epoch(result.history)
    assert fit_messages(caplog)[-1].endswith(
        f"| {h['seconds']:.1f}s | labelled photos' loss {h['train_loss_labelled']:.4f} | teacher photos' loss "
        f"{h['train_loss_teacher']:.4f}")  # no "* best" without a validation split


def test_a_resumed_run_takes_its_best_so_far_from_the_checkpoint_or_else_from_its_metrics(
        pets: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fit(config(pets, tmp_path / "run", epochs=1), progress=False)
    first = load_checkpoint(tmp_path / "run" / "last.pt")
    cases = [({"best_dice": 0.125, "best_epoch": 7}, {"val_dice": 0.5}, "best valid Dice 0.1250 at epoch 7"),
             ({}, {"val_dice": 0.5}, "best valid Dice 0.5000 at epoch 1"),  # written before these were kept
             ({}, {}, "best valid Dice -1.0000 at epoch 1")]
    for index, (kept, metrics, said) in enumerate(cases):
        checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
        state = {k: v for k, v in first.training_state.items() if k not in ("best_dice", "best_epoch")}
        checkpoint.training_state, checkpoint.metrics = state | kept, metrics
        resume = tmp_path / f"resume{index}.pt"
        save_checkpoint(checkpoint, resume)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="training.fit"):
            fit(config(pets, tmp_path / f"run{index}", epochs=2, resume=str(resume)), progress=False)
        assert f"resumed {resume} at epoch 1 ({said})" in caplog.messages, said
        assert not any(message.startswith("nothing to do") for message in caplog.messages)


def test_a_resumed_schedule_goes_on_where_it_stopped(pets: Path, tmp_path: Path) -> None:
    fit(config(pets, tmp_path / "run", epochs=1, scheduler="cosine"), progress=False)
    fit(config(pets, tmp_path / "run", epochs=2, scheduler="cosine", resume=str(tmp_path / "run" / "last.pt")),
        progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt").training_state["scheduler"]["last_epoch"] == 4


def test_a_checkpoint_of_another_network_cannot_be_resumed(pets: Path, tmp_path: Path) -> None:
    fit(config(pets, tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(CheckpointError, match="holds a 'unet' model, not 'resnet34_unet'"):
        fit(config(pets, tmp_path / "run", epochs=2, net="resnet34_unet", resume=str(tmp_path / "run" / "last.pt")),
            progress=False)


def test_a_new_run_loads_encoder_weights_into_its_model_and_a_resumed_one_does_not(
        pets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[tuple[nn.Module, TrainConfig, bool]] = []
    monkeypatch.setattr("training.fit._load_encoder_weights", lambda *args: loads.append(args))
    run = config(pets, tmp_path / "run", epochs=1, encoder_weights="encoder.pt")
    fit(run, progress=True)
    assert len(loads) == 1 and isinstance(loads[0][0], TinyNet) and loads[0][1:] == (run, True)
    fit(config(pets, tmp_path / "run", epochs=2, encoder_weights="encoder.pt",
               resume=str(tmp_path / "run" / "last.pt")), progress=False)
    assert len(loads) == 1


def test_a_run_with_progress_shows_a_bar_for_each_stage(pets: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    fit(config(pets, tmp_path / "quiet", epochs=1), progress=False)
    assert capsys.readouterr().err == ""
    fit(config(pets, tmp_path / "run", epochs=1), progress=True)
    bars = capsys.readouterr().err
    for label in ("decode train", "decode valid", "epoch 1/1", "valid"):
        assert f"{label}: " in bars, label
    images, labels = write_teacher_set(tmp_path / "teacher", count=3)
    fit(config(pets, tmp_path / "mix", epochs=1, teacher_images=str(images), teacher_labels=str(labels),
               teacher_holdout=0), progress=True)
    assert "decode teacher-labelled: " in capsys.readouterr().err
    assert "valid (trained weights)" not in bars  # no weight average, so no second validation
    fit(config(pets, tmp_path / "ema", epochs=1, ema_decay=0.9), progress=True)
    assert "valid (trained weights): " in capsys.readouterr().err


def test_a_step_gets_the_runs_precision_layout_optimisation_and_source_weights(
        pets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.fit as fit_module
    from training.loop import StepContext
    from training.pseudo_data import SOURCE_TEACHER

    contexts: list[StepContext] = []

    def recorded(*args: object, **kwargs: object) -> StepContext:
        contexts.append(StepContext(*args, **kwargs))  # type: ignore[arg-type]
        return contexts[-1]

    monkeypatch.setattr(fit_module, "StepContext", recorded)
    fit(config(pets, tmp_path / "run", epochs=1, channels_last=False, clip_grad_norm=0.5, ema_decay=0.9,
               teacher_weight=0.25, scheduler="cosine"), progress=True)
    (ctx,) = contexts
    assert (ctx.device, ctx.precision, ctx.channels_last, ctx.scaler) == (torch.device("cpu"), "fp32", False, None)
    assert (ctx.clip_grad_norm, ctx.progress, ctx.source_weights) == (0.5, True, {SOURCE_TEACHER: 0.25})
    assert isinstance(ctx.optimizer, torch.optim.Adam) and ctx.scheduler is not None
    assert ctx.weight_average is not None and ctx.weight_average.decay == 0.9


def test_resuming_a_run_kept_with_an_average_without_one_names_the_checkpoint(
        pets: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fit(config(pets, tmp_path / "run", epochs=1, ema_decay=0.9), progress=False)
    last = tmp_path / "run" / "last.pt"
    with caplog.at_level(logging.WARNING, logger="training.fit"):
        fit(config(pets, tmp_path / "run", epochs=2, resume=str(last)), progress=False)
    assert caplog.messages == [f"{last} kept a weight average (EMA); resuming with --ema 0 goes on from the trained "
                               "weights and drops the average"]
