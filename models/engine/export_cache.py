"""Where exported (ONNX) and quantised models are kept between starts: built once per checkpoint, then read.

The folder is ``PETSEG_CACHE_DIR`` when set, else next to inductor's compilation cache (``petseg_<user>`` beside
``torchinductor_<user>`` in the temporary folder, or beside ``TORCHINDUCTOR_CACHE_DIR``). File names start with
the checkpoint's sha256, so a new checkpoint never meets another's model. Building takes tens of seconds, so
processes that start together (``--workers N``) take a file lock: one builds, the others wait and read. Where the
folder cannot be written, models are built in memory for each start.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "cached_file"]

log = logging.getLogger(__name__)

CACHE_ENV = "PETSEG_CACHE_DIR"


def _user() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return re.sub(r'[\\/:*?"<>|]', "_", name)


def cache_dir() -> Path:
    """``PETSEG_CACHE_DIR``, else a ``petseg_<user>`` folder beside inductor's cache."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "").strip()
    parent = Path(inductor).expanduser().resolve().parent if inductor else Path(tempfile.gettempdir())
    return parent / f"petseg_{_user()}"


def cached_file(name: str, build: Callable[[Path], None], folder: Path | None = None) -> Path | None:
    """The cached file ``name``, built by ``build(path)`` (which must write ``path`` atomically) when missing.

    None when the cache folder cannot be written: the caller builds in memory instead."""
    folder = folder or cache_dir()
    path = folder / name
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f".{name}.lock", "a+b")  # noqa: SIM115 - closed below
    except OSError as exc:
        log.warning("model cache %s is not writable (%s); building in memory", folder, exc)
        return None
    with lock, _locked(lock.fileno()):
        if path.is_file():  # another process built it while this one waited
            log.info("%s was built by another process", path.name)
        else:
            build(path)
    return path


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
