"""Resuming a run: ``petseg-train --save-every`` saves part-way through an epoch, and a run resumed there ends as
the same run unbroken would (same weights, same epoch numbers); ``--model`` resumes with the run's own settings."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models import ARCHITECTURES
from models.checkpoint import load_checkpoint, save_checkpoint
from tests.factories import make_pet_dataset
from tests.training.test_fit_run import TinyNet, config
from training import fit as fit_module
from training.distributed import DistInfo
from training.fit import fit
from training.metrics import SegmentationMetrics
from training.progress import EpochProgress, ProgressSaver, ResumableSampler
from training.run_settings import inherit_run_settings
from training.train import build_parser, config_from_args, main


class Stopped(Exception):
    """The run's process ending (a session's end, a spot instance taken back) right after a save."""


@pytest.fixture(autouse=True)
def tiny_unet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ARCHITECTURES, "unet", TinyNet)
    monkeypatch.setitem(ARCHITECTURES, "resnet34_unet", TinyNet)


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    return make_pet_dataset(tmp_path / "pets", n_trainval=10, n_test=2)  # 8 train photos: 4 steps of 2


def stop_after_saving(monkeypatch: pytest.MonkeyPatch, epoch: int, samples: int) -> list[int]:
    """Every step saves; the run stops once ``epoch`` has saved after ``samples`` photos. The saves' positions."""
    saved: list[int] = []

    class StoppingSaver(ProgressSaver):
        def __call__(self, progress: EpochProgress) -> None:
            super().__call__(progress)
            saved.append(progress.samples)
            if (progress.epoch, progress.samples) == (epoch, samples):
                raise Stopped

    monkeypatch.setattr(fit_module, "ProgressSaver", StoppingSaver)
    return saved


def test_a_run_stopped_mid_epoch_and_resumed_ends_as_the_unbroken_run(
        pets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = {"epochs": 3, "batch_size": 2, "scheduler": "cosine", "learning_rate": 3e-3}
    unbroken = fit(config(pets, tmp_path / "unbroken", **settings), progress=False)
    saved = stop_after_saving(monkeypatch, epoch=2, samples=4)
    with pytest.raises(Stopped):
        fit(config(pets, tmp_path / "run", save_every=1e-9, **settings), progress=False)
    assert saved == [2, 4, 6, 8, 2, 4]
    last = tmp_path / "run" / "last.pt"
    mid = load_checkpoint(last)  # weights_only: the epoch's sums are plain containers
    assert mid.epoch == 1 and mid.training_state["partial"]["epoch"] == 2
    assert mid.training_state["partial"]["samples"] == 4 and len(mid.training_state["partial"]["metrics"]["dice"]) == 4
    mid.training_state["partial"]["seconds"] = 1000.0  # the epoch's time so far counts in its seconds
    save_checkpoint(mid, last)
    monkeypatch.setattr(fit_module, "ProgressSaver", ProgressSaver)
    with caplog.at_level(logging.INFO, logger="training.fit"):
        resumed = fit(config(pets, tmp_path / "run", resume=str(last), **settings), progress=False)
    assert "epoch 2 goes on after the 4 photos it had trained on" in caplog.messages
    assert resumed.history["epoch"] == [1.0, 2.0, 3.0]
    assert 1000.0 < resumed.history["seconds"][1] < 1100.0 and resumed.history["seconds"][2] < 100.0
    for key in ("train_loss", "train_dice", "val_loss", "val_dice", "lr"):
        assert resumed.history[key] == pytest.approx(unbroken.history[key], rel=1e-6, abs=1e-9), key
    ours, theirs = load_checkpoint(last), load_checkpoint(tmp_path / "unbroken" / "last.pt")
    assert ours.epoch == 3 and ours.training_state["partial"] is None
    for name, tensor in theirs.model_state.items():
        assert torch.allclose(ours.model_state[name], tensor, atol=1e-6), name


def test_a_save_at_an_epochs_last_step_resumes_into_that_epochs_end(
        pets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"epochs": 2, "batch_size": 2}
    unbroken = fit(config(pets, tmp_path / "unbroken", **settings), progress=False)
    stop_after_saving(monkeypatch, epoch=1, samples=8)  # before the epoch's validation and end-of-epoch save
    with pytest.raises(Stopped):
        fit(config(pets, tmp_path / "run", save_every=1e-9, **settings), progress=False)
    monkeypatch.setattr(fit_module, "ProgressSaver", ProgressSaver)
    resumed = fit(config(pets, tmp_path / "run", resume=str(tmp_path / "run" / "last.pt"), **settings),
                  progress=False)
    assert resumed.history["epoch"] == [1.0, 2.0]
    assert resumed.history["train_loss"] == pytest.approx(unbroken.history["train_loss"], rel=1e-6)


def test_without_save_every_nothing_is_saved_mid_epoch(pets: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[int | None] = []
    real_save = fit_module.save_checkpoint

    def record(checkpoint, path):  # type: ignore[no-untyped-def]
        written.append((checkpoint.training_state or {}).get("partial") is None)
        return real_save(checkpoint, path)

    monkeypatch.setattr(fit_module, "save_checkpoint", record)
    fit(config(pets, tmp_path / "run", batch_size=2), progress=False)
    assert written and all(written)  # only whole epochs (last.pt and best.pt)


def test_each_epochs_end_save_restarts_the_savers_clock(pets: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A save right after an epoch's end would write the same 100 MB again: the interval counts from the end."""
    events: list[str] = []

    class RecordingSaver(ProgressSaver):
        def restart(self) -> None:
            events.append("restart")
            super().restart()

        def __call__(self, progress: EpochProgress) -> None:
            events.append(f"step {progress.epoch}")

    monkeypatch.setattr(fit_module, "ProgressSaver", RecordingSaver)
    fit(config(pets, tmp_path / "run", batch_size=4, save_every=30.0), progress=False)
    assert events == ["restart", "step 1", "step 1", "restart", "step 2", "step 2"]


def test_the_sampler_leaves_out_what_the_epoch_trained_on_and_each_epoch_starts_whole() -> None:
    sampler = ResumableSampler(range(10), num_replicas=1, rank=0, seed=3)
    sampler.set_epoch(4)
    whole = list(sampler)
    assert sorted(whole) == list(range(10)) and len(sampler) == 10
    sampler.set_epoch(4, skip=6)
    assert list(sampler) == whole[6:] and len(sampler) == 4
    sampler.set_epoch(4, skip=99)
    assert list(sampler) == [] and len(sampler) == 0
    sampler.set_epoch(5)
    assert len(sampler) == 10 and list(sampler) != whole
    again = ResumableSampler(range(10), num_replicas=1, rank=0, seed=3)
    again.set_epoch(4)
    assert list(again) == whole  # a new process draws the same order: the seed and the epoch decide it
    share = ResumableSampler(range(10), num_replicas=2, rank=1, seed=3)
    share.set_epoch(4, skip=2)
    assert len(share) == 3


def test_the_saver_saves_when_its_interval_has_passed_since_the_last_save_or_the_epochs_start() -> None:
    now = [100.0]
    saves: list[int] = []
    saver = ProgressSaver(60.0, lambda p: saves.append(p.samples), clock=lambda: now[0])
    for samples, at in ((1, 130.0), (2, 160.0), (3, 200.0), (4, 221.0)):
        now[0] = at
        saver(EpochProgress(epoch=1, samples=samples))
    assert saves == [2, 4]  # 60 s after the start, 61 s after that save
    now[0] = 300.0
    saver.restart()
    now[0] = 350.0
    saver(EpochProgress(epoch=2, samples=1))
    assert saves == [2, 4]
    never = ProgressSaver(0.0, lambda p: saves.append(-1), clock=lambda: now[0] + 1e9)
    never(EpochProgress(epoch=1))
    assert saves == [2, 4]


def test_an_epochs_progress_survives_a_round_trip_through_plain_containers() -> None:
    metrics = SegmentationMetrics(names=["a_1"], dice=[0.5], iou=[0.3], intersection=2.0, pred_pixels=3.0,
                                  target_pixels=5.0)
    progress = EpochProgress(epoch=3, samples=8, seconds=12.5, loss_sum=1.25, source_sums={1: [0.5, 2]},
                             metrics=metrics)
    raw = progress.to_dict()
    assert isinstance(raw["metrics"], dict)
    assert EpochProgress.from_dict(raw) == progress


def test_save_every_on_the_command_line(pets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--data_path", str(pets), "--save-every", "20"])
    assert config_from_args(args).save_every == 20.0
    assert config_from_args(build_parser().parse_args(["--data_path", str(pets)])).save_every == 0.0
    with pytest.raises(SystemExit) as exit_info:
        main(["--data_path", str(pets), "--out", str(tmp_path / "run"), "--save-every", "0"])
    assert exit_info.value.code == 2
    assert "argument --save-every: must be > 0, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--save-every must be >= 0 minutes, not -1"):
        config(pets, tmp_path / "run", save_every=-1).check()


def test_under_torchrun_a_mid_epoch_save_is_refused(pets: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--save-every saves part-way through an epoch from a single process"):
        fit_module._fit(config(pets, tmp_path / "run", save_every=5.0), torch.device("cpu"), "fp32",
                        DistInfo(rank=0, world_size=2, local_rank=0), False)


def cli(*flags: str) -> int:
    return main([*flags, "--workers", "0", "--device", "cpu", "--amp", "fp32"])


def test_a_resumed_run_goes_on_with_its_own_settings_and_the_flags_given_override_them(
        pets: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    assert cli("--data_path", str(pets), "--out", str(out), "-n", "resnet34_unet", "-e", "1", "-b", "2",
               "-lr", "2e-3", "--image-size", "40", "--augment", "none", "--border", "ignore", "--seed", "5",
               "--folds", "5", "--save-every", "30") == 0
    with caplog.at_level(logging.INFO, logger="training.train"):
        assert cli("--model", str(out / "last.pt"), "-e", "2", "-lr", "1e-3") == 0  # as in the guide
    saved = load_checkpoint(out / "last.pt")
    assert saved.epoch == 2 and saved.arch == "resnet34_unet" and saved.image_size == 40
    kept = {key: saved.config[key] for key in ("data_path", "batch_size", "augment", "ignore_border", "seed",
                                                "folds", "save_every", "learning_rate", "epochs")}
    assert kept == {"data_path": str(pets), "batch_size": 2, "augment": "none", "ignore_border": True, "seed": 5,
                    "folds": 5, "save_every": 30.0, "learning_rate": 1e-3, "epochs": 2}
    line = next(m for m in caplog.messages if m.startswith("resuming with the run's own settings"))
    assert f"data_path={pets}" in line and "net=resnet34_unet" in line and "learning_rate" not in line


@pytest.mark.parametrize(("changed", "now"), [({"limit": 6}, "6 photos (seed 42)"), ({"seed": 7}, "8 photos (seed 7)")],
                         ids=["fewer-photos", "another-seed"])
def test_a_mid_epoch_save_of_another_order_starts_the_epoch_over(
        pets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        changed: dict, now: str) -> None:
    stop_after_saving(monkeypatch, epoch=1, samples=4)
    with pytest.raises(Stopped):
        fit(config(pets, tmp_path / "run", batch_size=2, save_every=1e-9), progress=False)
    monkeypatch.setattr(fit_module, "ProgressSaver", ProgressSaver)
    with caplog.at_level(logging.INFO, logger="training.fit"):
        result = fit(config(pets, tmp_path / "run", batch_size=2, epochs=1, resume=str(tmp_path / "run" / "last.pt"),
                            **changed), progress=False)
    assert f"epoch 1 starts over: its order of 8 photos (seed 42) is now {now}" in caplog.messages
    assert result.history["epoch"] == [1.0]
    assert not any("goes on after" in m for m in caplog.messages)


@pytest.mark.parametrize(("saved", "border"), [({"border_is_pet": True, "ignore_border": True}, "ignore"),
                                               ({"border_is_pet": False, "ignore_border": False}, "background"),
                                               ({"border_is_pet": True, "ignore_border": False}, "pet")])
def test_the_saved_border_convention_and_clipping_map_back_onto_their_flags(saved: dict, border: str) -> None:
    args = build_parser().parse_args([])
    changed = inherit_run_settings(args, {**saved, "clip_grad_norm": 0.5, "augment": "strong"}, given={"augment"})
    assert (args.border, args.clip_grad, args.augment) == (border, 0.5, "report")
    assert "augment" not in changed and changed["clip_grad"] == 0.5
    older = build_parser().parse_args([])
    assert inherit_run_settings(older, {"net": "unet"}, given=set()) == {}  # fields a checkpoint lacks: defaults
    assert (older.border, older.underexpose) == ("pet", 0.0)
