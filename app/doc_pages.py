"""The command line shared by the generated docs pages (the settings table, the API reference): write the page,
or check that the committed one is what the code generates now."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["write_or_check"]


def write_or_check(render: Callable[[], str], argv: Sequence[str] | None, *, prog: str, description: str) -> int:
    """``--write PAGE`` writes ``render()``; ``--check PAGE`` exits 1 with one line when PAGE differs."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", type=Path, metavar="PAGE", help="write the page")
    action.add_argument("--check", type=Path, metavar="PAGE", help="exit 1 when PAGE differs from the code")
    args = parser.parse_args(argv)
    page = render()
    if args.write:
        args.write.write_text(page)
        return 0
    if not args.check.is_file() or args.check.read_text() != page:
        print(f"{args.check} is out of date: run {prog} --write {args.check}", file=sys.stderr)
        return 1
    return 0
