"""Train UNet or ResNet34_UNet on Oxford-IIIT Pet.

    python -m training.train --data_path dataset/oxford-iiit-pet --download -n unet -e 30 -b 8
    python -m training.train --data_path ... -n resnet34_unet --amp bf16 --scheduler cosine --out runs/r34
    python -m training.train --data_path ... --model runs/r34/last.pt -e 60     # resume up to epoch 60
    torchrun --nproc_per_node 2 -m training.train ...                          # DistributedDataParallel
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models.nets.registry import canonical_arch_name
from training.cli import add_common_flags, at_least, check_can_write, run_cli, setup_logging, unit_interval
from training.config import SCHEDULERS, TrainConfig
from training.run_settings import explicit_flags, inherit_run_settings
from training.transforms import AUGMENTATIONS

log = logging.getLogger("training.train")
MIN_IMAGE_SIZE = 32  # below it the deepest feature map of the ResNet-34 encoder would be smaller than a pixel


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def ema_decay(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def fold_number(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number or 'none', not {text!r}") from None


def architecture(text: str) -> str:
    try:
        return canonical_arch_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="petseg-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("--epochs", "-e", type=at_least(1), default=d.epochs, help="train up to this epoch")
    p.add_argument("--learning-rate", "--learning_rate", "-lr", dest="learning_rate", type=positive_float,
                   default=d.learning_rate, help="Adam's learning rate (the peak, with --scheduler cosine)")
    p.add_argument("--net", "-n", type=architecture, default=d.net, help="unet or resnet34_unet")
    p.add_argument("--model", default=None,
                   help="checkpoint to resume from (weights, optimizer, schedule, epoch, history); "
                        "'last' or 'best' mean that file in --out")
    p.add_argument("--image-size", "--image_size", dest="image_size", type=at_least(MIN_IMAGE_SIZE),
                   default=d.image_size, help=f"training side in pixels (at least {MIN_IMAGE_SIZE}: the encoder "
                                              "halves it five times)")
    p.add_argument("--out", default=None,
                   help="output folder (default: the resumed checkpoint's folder, else runs/<net>)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that holds another run's checkpoints (they are replaced)")
    p.add_argument("--amp", choices=("auto", "fp32", "bf16", "fp16"), default=d.amp,
                   help="autocast: auto = bf16/fp16 on CUDA, fp32 on CPU; bf16 is fast on CPUs with AMX or "
                        "AVX512_BF16 (about 2x fp32 for ResNet34_UNet on an AMD EPYC Zen 4)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds weights, shuffling and augmentation")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler,
                   help="learning-rate schedule: constant (none) or cosine decay to the last epoch")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help="linear learning-rate warm-up over this many epochs (fractions allowed)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 penalty on the weights (Adam's weight_decay)")
    p.add_argument("--clip-grad", type=float, default=d.clip_grad_norm, help="max grad norm; 0 disables")
    p.add_argument("--augment", choices=AUGMENTATIONS, default=d.augment,
                   help="report = the lab report's flips, shifts and colour jitter; strong = harder, with crops, "
                        "blur and greyscale; copy-paste = strong on pets pasted onto other photos' backgrounds")
    p.add_argument("--underexpose", type=unit_interval, default=d.underexpose, metavar="SHARE",
                   help="darken this share of the training photos by one to one and a half stops, so the model "
                        "meets underexposed rooms (0.2 in the model card's test; 0 = never)")
    p.add_argument("--border", choices=("pet", "background", "ignore"), default="pet",
                   help="what the trimap's border pixels count as in the loss (the report: pet); ignore = "
                        "neither, so the model learns the outline it sees rather than a fat band")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep tensors NCHW (channels_last is faster for convolutions on CPUs and GPUs)")
    p.add_argument("--save-every", type=positive_float, default=d.save_every, metavar="MINUTES",
                   help="also save last.pt every MINUTES during an epoch, with where the epoch stands: resumed "
                        "from it (--model last), the run trains on from that photo, so a stopped run loses at most "
                        "MINUTES of an hour-long epoch (default: at each epoch's end only)")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="decode images every epoch")
    p.add_argument("--skip-bad", action="store_true", help="report and skip unreadable samples instead of failing")
    p.add_argument("--limit", type=at_least(1), default=None, help="use only the first N images of each split")
    p.add_argument("--folds", type=at_least(1), default=d.folds,
                   help="cross-validation: trainval is cut into this many folds by index %% folds")
    p.add_argument("--fold", type=fold_number, default=d.fold,
                   help="the fold held out for validation (0..folds-1); --folds 10 --fold 0 is the lab's split; "
                        "none = train on every trainval image with no validation (best.pt is then the last epoch): "
                        "for the final model once a recipe is chosen")
    p.add_argument("--holdout-breed", default=None, metavar="BREED",
                   help="leave one breed out: every trainval photo of BREED is the validation split and the other "
                        "breeds train (instead of --folds/--fold); how well does the recipe do on a breed no "
                        "trimap covered?")
    p.add_argument("--init-weights", default=None,
                   help="start a new run from this checkpoint's weights (fresh optimizer, schedule and epochs)")
    p.add_argument("--encoder-weights", default=None,
                   help="pretrained ResNet-34 encoder for resnet34_unet: 'imagenet' (torchvision's weights, "
                        "downloaded once and cached) or a state-dict file; for small datasets")
    p.add_argument("--ema", dest="ema_decay", type=ema_decay, default=d.ema_decay,
                   help="keep an exponential moving average of the weights with this decay per step (e.g. 0.999; "
                        "0 = off): the average is what is validated and saved, so the last epoch needs no picking")
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=d.ema_warmup,
                   help="with --ema: start from a short memory that grows to the decay's (decay min(d, (1 + n) / "
                        "(10 + n)) after n steps), so a short run's average is not held back by its first, random "
                        "weights; --no-ema-warmup keeps the decay fixed from the first step")
    teacher = p.add_argument_group("teacher-labelled photos (semi-supervised; labels from petseg-pseudolabel)")
    teacher.add_argument("--teacher-images", default=None, help="folder of photos with teacher labels")
    teacher.add_argument("--teacher-labels", default=None, help="folder of their label PNGs (and teacher.json)")
    teacher.add_argument("--teacher-confidence", type=float, default=d.teacher_confidence,
                         help="teacher pixels with a probability between 1 - c and c are left out of the loss")
    teacher.add_argument("--teacher-edge-band", type=at_least(0), default=d.teacher_edge_band,
                         help="pixels each side of the teacher's outline left out of the loss, so the trimaps "
                              "alone teach where the border band goes")
    teacher.add_argument("--teacher-grow", type=float, default=d.teacher_grow, metavar="SHARE",
                         help="grow the teacher's pet region by this share of the label's long side before the "
                              "targets are made, so teacher labels follow the trimaps' border-as-pet convention "
                              "(0.008 on ISNet's labels; 0 = the teacher's own outline)")
    teacher.add_argument("--teacher-weight", type=positive_float, default=d.teacher_weight,
                         help="a teacher-labelled image's weight in the loss (a labelled image's is 1)")
    teacher.add_argument("--labelled-repeat", type=at_least(1), default=d.labelled_repeat,
                         help="show the labelled photos this many times an epoch beside the teacher-labelled ones")
    teacher.add_argument("--teacher-holdout", type=at_least(0), default=d.teacher_holdout,
                         help="keep 1 in N teacher-labelled photos (by a hash of the name) out of training, to "
                              "measure the student against its teacher on photos it never saw; 0 = none")
    p.add_argument("--download", action="store_true", help="fetch the official archives into --data_path first")
    return p


def default_out(args: argparse.Namespace) -> str:
    """``--out``; else the folder of the checkpoint being resumed (so the run goes on where it was); else
    ``runs/<net>``."""
    if args.out:
        return args.out
    if args.model and args.model not in ("last", "best"):
        return str(Path(args.model).parent)
    return f"runs/{args.net}"


def check_out_folder(config: TrainConfig, overwrite: bool) -> None:
    """Before any image is decoded: ``--out`` can be written, and a new run does not replace another's
    checkpoints unless ``--overwrite`` says so (resuming a checkpoint of that folder is going on, not replacing)."""
    out = check_can_write(config.out, folder=True)
    held = [name for name in ("last.pt", "best.pt") if (out / name).exists()]
    resuming_here = config.resume is not None and Path(config.resume).resolve().parent == out.resolve()
    if held and not resuming_here and not overwrite:
        raise ValueError(f"{out} holds another run ({', '.join(held)}): resume it with --model {out / 'last.pt'}, "
                         "give another --out, or pass --overwrite to replace it")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    out = default_out(args)
    resume = str(Path(out) / f"{args.model}.pt") if args.model in ("last", "best") else args.model
    return TrainConfig(
        data_path=args.data_path, net=args.net, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, scheduler=args.scheduler,
        warmup_epochs=args.warmup_epochs, image_size=args.image_size, augment=args.augment,
        underexpose=args.underexpose,
        border_is_pet=args.border != "background", ignore_border=args.border == "ignore",
        clip_grad_norm=args.clip_grad, amp=args.amp,
        channels_last=args.channels_last, device=args.device, workers=args.workers, seed=args.seed,
        out=out, resume=resume, save_every=args.save_every, cache=args.cache, skip_bad=args.skip_bad,
        limit=args.limit, folds=args.folds, fold=args.fold, holdout_breed=args.holdout_breed,
        init_weights=args.init_weights,
        encoder_weights=args.encoder_weights, ema_decay=args.ema_decay, ema_warmup=args.ema_warmup,
        teacher_images=args.teacher_images, teacher_labels=args.teacher_labels,
        teacher_confidence=args.teacher_confidence, teacher_edge_band=args.teacher_edge_band,
        teacher_grow=args.teacher_grow,
        teacher_weight=args.teacher_weight, labelled_repeat=args.labelled_repeat,
        teacher_holdout=args.teacher_holdout,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    inherited: dict[str, object] = {}
    if args.model:  # a resumed run goes on with its own settings, but for the flags given here
        from models.checkpoint import CheckpointError, load_checkpoint

        try:
            saved = load_checkpoint(config_from_args(args).resume).config  # type: ignore[arg-type]
        except CheckpointError:
            saved = {}  # the run reports an unreadable checkpoint itself, as one line with exit code 2
        given = explicit_flags(build_parser, sys.argv[1:] if argv is None else argv)
        inherited = inherit_run_settings(args, saved, given)
    if args.folds < 2 or (args.fold is not None and not 0 <= args.fold < args.folds):
        parser.error(f"--fold must be in 0..{args.folds - 1} and --folds at least 2")
    if args.init_weights and args.model:
        parser.error("--init-weights starts a new run; --model resumes one: give one of them")
    try:
        config_from_args(args).check()
    except ValueError as exc:
        parser.error(str(exc))
    if args.encoder_weights and args.init_weights:
        parser.error("--init-weights already sets every weight; --encoder-weights would be overwritten")
    setup_logging(args.verbose)
    if inherited:
        log.info("resuming with the run's own settings: %s (a flag given here overrides its setting)",
                 ", ".join(f"{name}={value}" for name, value in inherited.items()))

    def run() -> int:
        config = config_from_args(args)
        check_out_folder(config, args.overwrite)
        if args.download:
            from training.download import download_dataset

            download_dataset(Path(args.data_path))
        from training.fit import fit

        result = fit(config, progress=sys.stderr.isatty())
        if args.fold is None:
            log.info("done: %d epochs on every trainval image; checkpoints in %s", result.last_epoch, result.out_dir)
        else:
            log.info("done: best valid Dice %.4f at epoch %d; checkpoints in %s", result.best_dice,
                     result.best_epoch, result.out_dir)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
