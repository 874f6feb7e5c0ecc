"""The command-line reference page (docs/cli.md) is generated from the tools' parsers and kept in step with them."""
from __future__ import annotations

import argparse
import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from training import cli_reference
from training.cli import at_least
from training.cli_reference import COMMANDS, description_markdown, render_page, value_text

ROOT = Path(__file__).resolve().parents[2]


def test_the_page_is_what_the_parsers_generate() -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == render_page(), "run: python -m training.cli_reference > docs/cli.md"


def test_every_training_command_is_on_the_page() -> None:
    installed = [script for script in entry_points(group="console_scripts") if script.name.startswith("petseg")]
    training = {script.name: script.module for script in installed if script.module.startswith("training.")}
    assert dict(COMMANDS) == training
    page = render_page()
    for command in training:
        assert f"\n## {command}\n" in page


def test_environment_defaults_do_not_leak_into_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSEG_RUNTIME", "openvino")
    monkeypatch.setenv("PETSEG_COMPILE", "off")
    assert render_page() == (ROOT / "docs" / "cli.md").read_text()
    assert (os.environ["PETSEG_RUNTIME"], os.environ["PETSEG_COMPILE"]) == ("openvino", "off")


def test_a_flag_row_names_every_spelling_its_value_default_and_help() -> None:
    parser = argparse.ArgumentParser(prog="petseg-demo")
    parser.add_argument("photos", nargs="*", help="files")
    parser.add_argument("--size", "-s", type=at_least(32), default=256, help="side | in px, 100%% of it")
    parser.add_argument("--mode", choices=("a", "b"), default="a", help="a mode")
    parser.add_argument("--out", required=True, metavar="DIR", help="where")
    parser.add_argument("--extra", action="append", default=[], metavar="CKPT", help="more")
    parser.add_argument("--fast", action="store_true", help="go")
    parser.add_argument("--no-cache", dest="cache", action="store_false", help="no cache")
    parser.add_argument("--warm", action=argparse.BooleanOptionalAction, default=True, help="warm up")
    parser.add_argument("--hidden", help=argparse.SUPPRESS)
    group = parser.add_argument_group("teachers (at least one)")
    group.add_argument("--ratio", type=float, default=None, help="share")
    lines = cli_reference.command_section("petseg-demo", parser)
    assert lines[:2] == ["## petseg-demo", ""]
    rows = [line for line in lines if line.startswith("| `")]
    assert rows == [
        "| `photos` (positional) | list of text | unset | files |",
        "| `--size`, `-s` | integer >= 32 | `256` | side \\| in px, 100% of it |",
        "| `--mode` | one of `a`, `b` | `a` | a mode |",
        "| `--out` | `DIR` | required | where |",
        "| `--extra` | `CKPT`, repeatable | unset | more |",
        "| `--fast` | switch | off | go |",
        "| `--no-cache` | switch | off | no cache |",
        "| `--warm`, `--no-warm` | switch | on | warm up |",
        "| `--ratio` | number | unset | share |",
    ]
    assert "**Teachers (at least one)**" in lines
    assert lines.index("**Teachers (at least one)**") > lines.index("| `--warm`, `--no-warm` | switch | on | warm up |")


def test_a_parser_named_unlike_its_command_is_refused() -> None:
    with pytest.raises(ValueError, match="petseg-evaluate's parser calls itself 'evaluate'"):
        cli_reference.command_section("petseg-evaluate", argparse.ArgumentParser(prog="evaluate"))


def test_a_type_without_a_name_is_an_error_not_a_blank() -> None:
    parser = argparse.ArgumentParser()
    action = parser.add_argument("--odd", type=lambda text: text)
    with pytest.raises(ValueError, match="--odd: name its type"):
        value_text(action)


def test_the_description_keeps_its_examples_as_a_bash_block() -> None:
    text = "Train it.\n\n    petseg-train -e 3\n    petseg-train -e 4\n\nA ``cv`` run\nresumes.\n"
    assert description_markdown(text) == [
        "Train it.", "", "```bash", "petseg-train -e 3", "petseg-train -e 4", "```", "", "A `cv` run", "resumes.", ""]


def test_at_least_names_its_bound_and_refuses_below_it() -> None:
    parser = argparse.ArgumentParser(prog="p", exit_on_error=False)
    parser.add_argument("--n", type=at_least(2))
    assert parser.parse_args(["--n", "2"]).n == 2
    for text, message in (("1", "argument --n: must be >= 2, got 1"), ("x", "argument --n: invalid integer value: 'x'")):
        with pytest.raises(argparse.ArgumentError) as caught:
            parser.parse_args(["--n", text])
        assert str(caught.value) == message
    assert at_least(2).value_name == "integer >= 2"


def test_each_commands_help_keeps_its_usage_examples_line_for_line() -> None:
    from importlib import import_module

    for command, module in COMMANDS:
        parser = import_module(module).build_parser()
        examples = [line for line in (parser.description or "").splitlines() if line.startswith("    ")]
        assert examples, command
        help_text = parser.format_help()
        for line in examples:
            assert line in help_text.splitlines(), (command, line)
