"""The command-line reference of the docs (docs/cli.md), generated from the training tools' own parsers, so that
a flag, its default or its help cannot change without the page.

    python -m training.cli_reference > docs/cli.md    # after changing a flag (a test compares the page)
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module

from training.cli import unit_interval
from training.pseudolabel import parse_triple
from training.shards import parse_shard
from training.train import (
    architecture,
    ema_decay,
    fold_number,
    positive_float,
)

__all__ = ["COMMANDS", "render_page"]

# (command, module whose build_parser() it runs): pyproject.toml's console scripts of the training package.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("petseg-train", "training.train"),
    ("petseg-cv", "training.cv"),
    ("petseg-evaluate", "training.evaluate"),
    ("petseg-predict", "training.predict"),
    ("petseg-pseudolabel", "training.pseudolabel"),
    ("petseg-export", "training.export"),
)

# The reader's name for each argparse type the tools use; a new type without a name here is an error, not a blank.
VALUE_NAMES: dict[Callable[[str], object], str] = {
    int: "integer", float: "number", unit_interval: "number in [0, 1]", positive_float: "number > 0",
    ema_decay: "number in [0, 1)",
    fold_number: "integer or `none`", architecture: "`unet` or `resnet34_unet`", parse_shard: "`I/N` or `auto/N`",
    parse_triple: "three numbers (`0.5,0.5,0.5`)",
}
# Defaults read from the environment (training.cli.add_inference_flags): the page shows the value without them.
# argparse's own groups (positionals, then options; "optional arguments" before Python 3.10): one table.
UNTITLED_GROUPS = ("positional arguments", "options", "optional arguments")
ENVIRONMENT_DEFAULTS = ("PETSEG_RUNTIME", "PETSEG_PRECISION", "PETSEG_COMPILE")


def value_text(action: argparse.Action) -> str:
    """What a flag takes: a switch, one of its choices, or its type's name (plus its metavar, repeats, lists)."""
    if action.nargs == 0:
        return "switch"
    if action.choices is not None:
        text = "one of " + ", ".join(f"`{choice}`" for choice in action.choices)
    elif action.type is None:
        text = f"`{action.metavar}`" if action.metavar else "text"
    elif hasattr(action.type, "value_name"):
        text = str(action.type.value_name)
    elif action.type in VALUE_NAMES:
        text = VALUE_NAMES[action.type]
    else:
        raise ValueError(f"{'/'.join(action.option_strings)}: name its type {action.type!r} in VALUE_NAMES")
    if action.nargs in ("*", "+"):
        text = f"list of {text}"
    if isinstance(action, argparse._AppendAction):
        text += ", repeatable"
    return text


def default_text(action: argparse.Action) -> str:
    optional_positional = not action.option_strings and action.nargs in ("*", "?")  # "required" varies by Python
    if action.required and not optional_positional:
        return "required"
    if isinstance(action, argparse.BooleanOptionalAction):
        return "on" if action.default else "off"
    if action.nargs == 0:
        return "off"  # a switch that is not given
    if action.default is None or action.default == []:
        return "unset"
    return f"`{action.default}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def flags_table(actions: list[argparse.Action]) -> list[str]:
    rows = ["| flag | value | default | meaning |", "| --- | --- | --- | --- |"]
    for action in actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.dest}` (positional)"
        rows.append(f"| {names} | {cell(value_text(action))} | {cell(default_text(action))} | "
                    f"{cell((action.help or '').replace('%%', '%'))} |")
    return rows


def description_markdown(description: str) -> list[str]:
    """A module docstring as Markdown: indented paragraphs (the usage examples) become a bash block."""
    lines: list[str] = []
    for paragraph in re.split(r"\n\s*\n", description.strip("\n")):
        rows = paragraph.splitlines()
        if all(row.startswith("    ") for row in rows):
            lines += ["```bash", *(row[4:] for row in rows), "```", ""]
        else:
            lines += [re.sub(r"``([^`]+)``", r"`\1`", row.strip()) for row in rows] + [""]
    return lines


def command_section(command: str, parser: argparse.ArgumentParser) -> list[str]:
    if parser.prog != command:
        raise ValueError(f"{command}'s parser calls itself {parser.prog!r} in its usage line")
    lines = [f"## {command}", "", *description_markdown(parser.description or "")]
    untitled = [action for group in parser._action_groups if group.title in UNTITLED_GROUPS
                for action in group._group_actions]
    lines += [*flags_table(untitled), ""]
    for group in parser._action_groups:
        if group.title not in UNTITLED_GROUPS and group._group_actions:
            lines += [f"**{group.title[0].upper()}{group.title[1:]}**", "", *flags_table(group._group_actions), ""]
    return lines


@contextmanager
def without_environment_defaults() -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in ENVIRONMENT_DEFAULTS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def render_page() -> str:
    lines = [
        "# Command line",
        "",
        "<!-- Generated by `python -m training.cli_reference > docs/cli.md` from the commands' own parsers; do not "
        "edit by hand: a test compares this page with them. -->",
        "",
        "The training tools, flag by flag. Each command also answers `--help`; bad values stop it with one line",
        "and exit code 2. The service's commands (`petseg-serve`, `petseg segment`) are in",
        "[Getting started](getting-started.md) and [Using the API](api.md).",
        "",
    ]
    with without_environment_defaults():
        for command, module in COMMANDS:
            lines += command_section(command, import_module(module).build_parser())
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_page())
