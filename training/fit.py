"""Build everything a run needs from a TrainConfig, resume if asked, and run the epochs."""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, Subset

from models import build_model
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from models.engine.runtime import resolve_device, resolve_precision
from models.nets.registry import canonical_arch_name
from models.pretrained import load_encoder_state
from training.config import SCHEDULERS, TrainConfig
from training.copy_paste import CopyPaste
from training.data import PetDataset
from training.distributed import DistInfo, ShardSampler, cleanup_distributed, gather_result, init_distributed
from training.ema import WeightAverage
from training.encoder_weights import read_encoder_weights
from training.loop import EpochResult, StepContext, evaluate_epoch, train_one_epoch
from training.losses import BCEDiceLoss
from training.metrics import SegmentationMetrics
from training.plots import plot_history
from training.progress import EpochProgress, ProgressSaver, ResumableSampler
from training.pseudo_data import (
    SOURCE_LABELLED,
    SOURCE_NAMES,
    SOURCE_TEACHER,
    TaggedDataset,
    TeacherLabelledDataset,
    is_teacher_holdout,
)
from training.transforms import build_transform

__all__ = ["FitResult", "fit", "seed_everything"]

log = logging.getLogger(__name__)
TRAINED_DICE = "val_dice_trained"  # with --ema: the trained (not averaged) weights' valid Dice
HISTORY_KEYS = ("epoch", "train_loss", "train_dice", "val_loss", "val_dice", "val_iou", "val_dice_micro", "lr",
                "seconds")


@dataclass
class FitResult:
    out_dir: Path
    best_dice: float
    best_epoch: int
    last_epoch: int
    history: dict[str, list[float]] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def augmenting_transform(config: TrainConfig) -> Any:
    """A run's training pipeline (``training.transforms``), shared by its labelled and teacher-labelled photos."""
    return build_transform(config.augment, config.image_size, underexpose=config.underexpose)


def _make_loaders(config: TrainConfig, device: torch.device, info: DistInfo, progress: bool
                  ) -> tuple[DataLoader, DataLoader | None, ResumableSampler]:
    """Train and valid loaders; no valid loader with ``fold=None`` (every trainval image trains)."""
    common: dict[str, Any] = {"image_size": config.image_size, "border_is_pet": config.border_is_pet,
                              "ignore_border": config.ignore_border,
                              "cache": config.cache, "skip_bad": config.skip_bad, "progress": progress,
                              "folds": config.folds, "fold": config.fold, "holdout_breed": config.holdout_breed}
    train_set: Any = PetDataset(config.data_path, "train", augmenting_transform(config), **common)
    valid_set: Any = PetDataset(config.data_path, "valid", build_transform("none", config.image_size), **common)
    if config.augment == "copy-paste":
        if not config.cache:
            raise ValueError("--augment copy-paste composites from the decoded cache: drop --no-cache")
        train_set.mixer = CopyPaste(train_set.decoded)
    if config.limit:
        train_set = Subset(train_set, range(min(config.limit, len(train_set))))
        valid_set = Subset(valid_set, range(min(config.limit, len(valid_set))))
    if config.teacher_labels is not None:
        train_set = _with_teacher_labels(train_set, config, progress)
    holding_out = config.fold is not None
    if len(train_set) == 0 or (holding_out and len(valid_set) == 0):
        raise ValueError(f"{config.data_path}: the train and valid splits need at least one image each "
                         f"(got {len(train_set)} and {len(valid_set)})")
    log.info("data: %d train / %d valid images from %s", len(train_set), len(valid_set), config.data_path)
    if not holding_out:
        log.info("no validation split (--fold none): every epoch is saved as best.pt, the last one is the model")
    generator = torch.Generator().manual_seed(config.seed)
    train_sampler = ResumableSampler(train_set, num_replicas=info.world_size, rank=info.rank, seed=config.seed)
    valid_sampler = ShardSampler(len(valid_set), info) if info.enabled else None
    loader_args: dict[str, Any] = {"num_workers": config.workers, "pin_memory": device.type == "cuda",
                                   "worker_init_fn": _seed_worker, "persistent_workers": config.workers > 0}
    train_loader = DataLoader(train_set, config.batch_size, sampler=train_sampler,
                              drop_last=len(train_set) > config.batch_size, generator=generator, **loader_args)
    valid_loader = DataLoader(valid_set, config.batch_size, shuffle=False, sampler=valid_sampler,
                              **loader_args) if holding_out else None
    return train_loader, valid_loader, train_sampler


def _with_teacher_labels(labelled: Any, config: TrainConfig, progress: bool) -> ConcatDataset:
    """The labelled photos (``labelled_repeat`` times) and the teacher-labelled ones, each sample tagged with its
    source; 1 in ``teacher_holdout`` teacher-labelled photos stays out (``is_teacher_holdout``)."""
    assert config.teacher_images is not None and config.teacher_labels is not None
    names = None
    if config.teacher_holdout:
        every = {p.stem for p in Path(config.teacher_labels).glob("*.png")}
        names = {n for n in every if not is_teacher_holdout(n, config.teacher_holdout)}
    teacher = TeacherLabelledDataset(config.teacher_images, config.teacher_labels, image_size=config.image_size,
                                     confidence=config.teacher_confidence, edge_band=config.teacher_edge_band,
                                     grow=config.teacher_grow,
                                     transform=augmenting_transform(config), names=names,
                                     progress=progress)
    if config.limit:
        teacher = Subset(teacher, range(min(config.limit, len(teacher))))  # type: ignore[assignment]
    tagged = TaggedDataset(labelled, SOURCE_LABELLED)
    log.info("mix: %d labelled photos x %d + %d teacher-labelled photos (loss weight %g; pet grown by %g of "
             "the side; pixels under %.2f confidence and %d px each side of the teacher's outline left out)",
             len(labelled), config.labelled_repeat, len(teacher), config.teacher_weight, config.teacher_grow,
             config.teacher_confidence, config.teacher_edge_band)
    return ConcatDataset([tagged] * config.labelled_repeat + [teacher])


def _make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step cosine decay with optional linear warm-up; ``none`` keeps the report's constant rate."""
    if config.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {config.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")
    if config.scheduler == "none":
        return None
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_metrics(train: EpochResult, valid: EpochResult | None) -> dict[str, float]:
    """The epoch's numbers; the valid ones are NaN when nothing is held out."""
    v = valid.metrics.summary() if valid is not None else SegmentationMetrics().summary()
    valid_loss = valid.loss if valid is not None else float("nan")
    return {"train_loss": train.loss, "train_dice": train.metrics.summary()["dice"], "val_loss": valid_loss,
            "val_dice": v["dice"], "val_iou": v["iou"], "val_dice_micro": v["dice_micro"],
            "val_iou_micro": v["iou_micro"]}


def fit(config: TrainConfig, *, progress: bool = True) -> FitResult:
    """Train ``config.net`` on ``config.data_path``; write best.pt, last.pt, history.json and curves.png."""
    config.net = canonical_arch_name(config.net)
    config.check()
    device = resolve_device(config.device)
    precision = resolve_precision(config.amp, device, training=True)
    info = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        return _fit(config, device, precision, info, progress and info.is_main)
    finally:
        cleanup_distributed(info)


def _fit(config: TrainConfig, device: torch.device, precision: str, info: DistInfo, progress: bool) -> FitResult:
    if info.enabled and config.save_every > 0:
        raise ValueError("--save-every saves part-way through an epoch from a single process; under torchrun "
                         "each epoch's end is saved")
    seed_everything(config.seed + info.rank)
    out_dir = Path(config.out)
    resume = load_checkpoint(config.resume, expected_arch=config.net) if config.resume else None
    if resume is not None and resume.image_size != config.image_size:
        log.warning("resuming at the checkpoint's image size %d (not %d)", resume.image_size, config.image_size)
        config.image_size = resume.image_size
    train_loader, valid_loader, train_sampler = _make_loaders(config, device, info, progress)

    model: nn.Module = build_model(config.net) if resume is None else resume.build_model()
    if config.init_weights and resume is None:
        model = _initial_weights(config)
    elif config.encoder_weights and resume is None:
        _load_encoder_weights(model, config, progress)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    core = model
    average = WeightAverage(core, config.ema_decay, config.ema_warmup) if config.ema_decay else None
    if resume is not None:
        _restore_weight_average(resume, core, average, config.resume)
        if average is not None:
            config.ema_warmup = average.warmup  # the checkpoint's config says how the average was kept
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(core.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _make_scheduler(config, optimizer, len(train_loader))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
    if average is not None:
        history[TRAINED_DICE] = []
    best_dice, best_epoch, start_epoch = -1.0, 0, 1
    under_way: EpochProgress | None = None  # an epoch a mid-epoch save stopped in
    last_metrics: dict[str, float] = {}
    if resume is not None:
        start_epoch = resume.epoch + 1
        state = resume.training_state or {}
        if state.get("partial"):  # saved part-way through epoch ``resume.epoch + 1``
            under_way = EpochProgress.from_dict(state["partial"])
        last_metrics = dict(resume.metrics)
        _restore(state, optimizer, scheduler, scaler)
        history.update({k: list(v) for k, v in (state.get("history") or {}).items()})
        best_dice = float(state.get("best_dice", resume.metrics.get("val_dice", -1.0)))
        best_epoch = int(state.get("best_epoch", resume.epoch))
        log.info("resumed %s at epoch %d (best valid Dice %.4f at epoch %d)", config.resume, resume.epoch,
                 best_dice, best_epoch)
        saved_seed = int(resume.config.get("seed", config.seed))  # the seed the saved epoch's order was drawn with
        if under_way is not None and (under_way.photos, saved_seed) != (train_sampler.num_samples, config.seed):
            log.warning("epoch %d starts over: its order of %d photos (seed %d) is now %d photos (seed %d)",
                        under_way.epoch, under_way.photos, saved_seed, train_sampler.num_samples, config.seed)
            under_way = None
        if under_way is not None:
            log.info("epoch %d goes on after the %d photos it had trained on", under_way.epoch, under_way.samples)
    if start_epoch > config.epochs:
        log.info("nothing to do: the checkpoint already reached epoch %d of %d", start_epoch - 1, config.epochs)

    ctx = StepContext(device, precision, config.channels_last, BCEDiceLoss(), optimizer, scaler, scheduler,
                      config.clip_grad_norm, progress, weight_average=average,
                      source_weights={SOURCE_TEACHER: config.teacher_weight})
    evaluated = average.module if average is not None else model
    saved = average.module if average is not None else core
    if info.is_main:
        log.info("training %s on %s (%s, channels_last=%s) for epochs %d..%d -> %s", config.net, device, precision,
                 config.channels_last, start_epoch, config.epochs, out_dir)
        if average is not None:
            log.info("weight average: EMA with decay %g per step (about %.0f steps%s); validated and saved in place "
                     "of the trained weights", average.decay, 1.0 / (1.0 - average.decay),
                     ", reached after a warm-up from a short memory" if average.warmup else ", from the first step")

    def checkpoint_at(epoch: int, metrics: dict[str, float], partial: dict[str, Any] | None = None) -> Checkpoint:
        """What last.pt holds: the weights and everything a resumed run needs (``partial``: where an epoch
        under way stands; ``epoch`` is then the last one finished)."""
        state: dict[str, Any] = {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict() if scaler else None, "history": history, "best_dice": best_dice,
            "best_epoch": best_epoch, "partial": partial}
        if average is not None:  # the trained weights, to resume from; the checkpoint's weights are the average
            state.update(live_model=core.state_dict(), ema_updates=average.updates, ema_decay=average.decay,
                         ema_warmup=average.warmup)
        return Checkpoint(arch=config.net, model_state=saved.state_dict(), image_size=config.image_size,
                          border_is_pet=config.border_is_pet, epoch=epoch, metrics=metrics, config=config.to_dict(),
                          training_state=state)

    def save_under_way(progress: EpochProgress) -> None:
        partial = {**progress.to_dict(), "seconds": time.perf_counter() - started}
        save_checkpoint(checkpoint_at(progress.epoch - 1, last_metrics, partial), out_dir / "last.pt")
        log.info("epoch %d: saved after %d photos (%s)", progress.epoch, progress.samples, out_dir / "last.pt")

    saver = ProgressSaver(config.save_every * 60, save_under_way) if config.save_every > 0 else None
    ctx.after_step = saver
    reduce = (lambda r: gather_result(r, info)) if info.enabled else None
    for epoch in range(start_epoch, config.epochs + 1):
        progress = under_way if under_way is not None and under_way.epoch == epoch else EpochProgress(
            epoch, photos=train_sampler.num_samples)
        started = time.perf_counter() - progress.seconds
        train_sampler.set_epoch(epoch, skip=progress.samples)
        if saver is not None:
            saver.restart()
        train = train_one_epoch(model, train_loader, ctx, desc=f"epoch {epoch}/{config.epochs}", reduce=reduce,
                                progress=progress)
        if valid_loader is None:  # --fold none: nothing held out, nothing to pick; the latest epoch is the best
            metrics = _epoch_metrics(train, None)
        else:
            metrics = _epoch_metrics(train, evaluate_epoch(evaluated, valid_loader, ctx, reduce=reduce))
        if average is not None and valid_loader is not None:  # what the average buys, epoch by epoch
            trained = evaluate_epoch(model, valid_loader, ctx, desc="valid (trained weights)", reduce=reduce)
            metrics[TRAINED_DICE] = trained.metrics.summary()["dice"]
        for source, value in train.source_losses.items():  # the mix: each source's loss on its own
            metrics[f"train_loss_{SOURCE_NAMES[source]}"] = value
            history.setdefault(f"train_loss_{SOURCE_NAMES[source]}", [])
        seconds = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]
        for key, value in {"epoch": epoch, **metrics, "lr": lr, "seconds": seconds}.items():
            if key in history:
                history[key].append(float(value))
        improved = valid_loader is None or metrics["val_dice"] > best_dice
        if improved:
            best_dice, best_epoch = metrics["val_dice"], epoch
        last_metrics = metrics
        if info.is_main:
            trained_note = f" (trained weights {metrics[TRAINED_DICE]:.4f})" if TRAINED_DICE in metrics else ""
            by_source = "".join(f" | {key[len('train_loss_'):]} photos' loss {value:.4f}" for key, value in
                                metrics.items() if key.startswith("train_loss_"))
            log.info("epoch %d/%d  train loss %.4f dice %.4f | valid loss %.4f dice %.4f%s iou %.4f | lr %.2e | "
                     "%.1fs%s%s", epoch, config.epochs, metrics["train_loss"], metrics["train_dice"],
                     metrics["val_loss"], metrics["val_dice"], trained_note, metrics["val_iou"], lr, seconds,
                     by_source, "  * best" if improved and valid_loader is not None else "")
            checkpoint = checkpoint_at(epoch, metrics)
            save_checkpoint(checkpoint, out_dir / "last.pt")
            if improved:
                save_checkpoint(checkpoint, out_dir / "best.pt")
            _write_history(history, out_dir)
    return FitResult(out_dir, best_dice, best_epoch, max([0, *map(int, history["epoch"])]), history)


def _restore_weight_average(resume: Checkpoint, core: nn.Module, average: WeightAverage | None,
                            source: str | None) -> None:
    """A checkpoint written with ``--ema`` holds the average as its weights and the trained weights beside it:
    training goes on from the trained ones, and the average from where it was."""
    state = resume.training_state or {}
    live = state.get("live_model")
    if live is None:
        return
    core.load_state_dict(live)
    if average is None:
        log.warning("%s kept a weight average (EMA); resuming with --ema 0 goes on from the trained weights and "
                    "drops the average", source)
        return
    # runs saved before the warm-up existed kept a fixed decay, and go on with it
    average.restore(resume.model_state, int(state.get("ema_updates", 1)), bool(state.get("ema_warmup", False)))


def _initial_weights(config: TrainConfig) -> nn.Module:
    """A fresh run (new optimizer, schedule and history) that starts from another checkpoint's weights."""
    source = load_checkpoint(config.init_weights, expected_arch=config.net)  # type: ignore[arg-type]
    log.info("starting from the weights of %s (%s, epoch %d)", config.init_weights, source.arch, source.epoch)
    return source.build_model()


def _load_encoder_weights(model: nn.Module, config: TrainConfig, progress: bool) -> None:
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ValueError(f"--encoder-weights needs a model with a ResNet-34 encoder (resnet34_unet), not {config.net}")
    count = load_encoder_state(encoder, read_encoder_weights(config.encoder_weights, progress=progress))
    log.info("encoder: %d tensors loaded from %s", count, config.encoder_weights)


def _restore(state: dict[str, Any], optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler | None, scaler: torch.amp.GradScaler | None) -> None:
    try:
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"cannot resume the optimizer state: {exc}") from None


def _write_history(history: dict[str, list[float]], out_dir: Path) -> None:
    tmp = out_dir / "history.json.tmp"
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, out_dir / "history.json")
    plot_history(history, out_dir / "curves.png")
