"""Offline prediction over N processes or pods: ``--shard I/N`` takes a stable, disjoint share of the inputs.

A photo belongs to shard ``sha1(name) mod N``, where ``name`` is the stem its outputs are written under.
Hashing the name (not its position in a sorted list) keeps each photo on its shard when photos are added or
removed between runs, and photos that would write the same output file always land on the same shard, so two
processes never write one file. For many photos the shares are even to within a few percent; for a handful
they can be uneven (each shard still gets only its own photos).

``--shard auto/N`` reads the index from ``JOB_COMPLETION_INDEX``, which Kubernetes sets in every pod of an
Indexed Job (``completionMode: Indexed``); N must then equal the Job's ``completions``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["INDEX_VARIABLE", "Shard", "parse_shard", "shard_of", "take_shard"]

INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> Shard:
    """``I/N`` (0 <= I < N) or ``auto/N`` (I from ``$JOB_COMPLETION_INDEX``); argparse turns the error into
    a usage line and exit code 2."""
    environ = os.environ if environ is None else environ
    index_text, slash, count_text = text.strip().partition("/")
    if not slash:
        raise argparse.ArgumentTypeError(f"expected I/N or auto/N (e.g. 0/4), got {text!r}")
    try:
        count = int(count_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"N in {text!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"N in {text!r} must be at least 1")
    source = repr(text)
    if index_text == "auto":
        index_text = environ.get(INDEX_VARIABLE, "").strip()
        if not index_text:
            raise argparse.ArgumentTypeError(
                f"{text!r} takes the shard index from ${INDEX_VARIABLE}, which is not set "
                "(it is set in the pods of a Kubernetes Indexed Job; elsewhere give the index: I/N)")
        source = f"${INDEX_VARIABLE}={index_text!r}"
    try:
        index = int(index_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the shard index in {source} is not a whole number") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"the shard index in {source} must be between 0 and {count - 1}")
    return Shard(index, count)


def shard_of(name: str, count: int) -> int:
    """The shard a name belongs to: the same in every process, Python version and machine."""
    digest = hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % count


def take_shard(items: Sequence[tuple[str, T]], shard: Shard) -> list[tuple[str, T]]:
    """The ``(name, item)`` pairs of this shard, in their original order."""
    return [(name, item) for name, item in items if shard_of(name, shard.count) == shard.index]
