"""A resumed run goes on with the settings it was started with.

``petseg-train --model runs/x/last.pt`` takes every setting of the run (data, network, recipe, teacher mix) from
the checkpoint's saved config; a flag given on the command line overrides its setting (``-e 60`` to train
further). Settings of the machine (``--device``, ``--amp``, ``--workers``, ``--no-channels-last``) come from the
command line as for any run, and ``--init-weights``/``--encoder-weights`` only start new runs.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["RUN_SETTINGS", "explicit_flags", "inherit_run_settings"]

# the saved config's fields a resumed run takes, by the parser's name for them (same unless mapped below)
RUN_SETTINGS = (
    "data_path", "net", "epochs", "batch_size", "learning_rate", "weight_decay", "scheduler", "warmup_epochs",
    "image_size", "augment", "underexpose", "border", "clip_grad", "seed", "save_every", "cache", "skip_bad",
    "limit", "folds", "fold", "holdout_breed", "ema_decay", "ema_warmup", "teacher_images", "teacher_labels",
    "teacher_confidence", "teacher_edge_band", "teacher_grow", "teacher_weight", "labelled_repeat",
    "teacher_holdout",
)


def explicit_flags(build_parser: Any, argv: Sequence[str]) -> set[str]:
    """The parser destinations the command line sets itself (a fresh parser whose defaults are all left out)."""
    parser: argparse.ArgumentParser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(list(argv))
    return set(vars(given))


_SAVED_AS = {"border": ("border_is_pet", "ignore_border"), "clip_grad": ("clip_grad_norm",)}  # parser -> config


def _saved_value(config: dict[str, Any], dest: str) -> Any:
    if dest == "border":
        return "ignore" if config["ignore_border"] else "pet" if config["border_is_pet"] else "background"
    return config[_SAVED_AS.get(dest, (dest,))[0]]


def inherit_run_settings(args: argparse.Namespace, saved: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """Set on ``args`` every run setting the command line left out, from the checkpoint's ``saved`` config (a
    field it lacks, from a checkpoint older than the setting, keeps the parser's default). Returns the settings
    that differ from the parser's defaults, for the log."""
    changed: dict[str, Any] = {}
    for dest in RUN_SETTINGS:
        if dest in given or not all(field in saved for field in _SAVED_AS.get(dest, (dest,))):
            continue
        value = _saved_value(saved, dest)
        if value != getattr(args, dest):
            changed[dest] = value
            setattr(args, dest, value)
    return changed
