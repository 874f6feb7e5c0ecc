"""Atomic file writes: a temporary file in the target's folder, renamed over the target once complete, so a
reader or a crash mid-write sees the whole previous file or the whole new one, never half of either.

One mechanism for checkpoints, ONNX exports and predicted masks. The file ends with the mode ``open()`` would
give it (``mkstemp`` makes it 0o600, which would hide it from a web server or a container's other user).
``app.client`` keeps its own copy, to stay free of torch.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["new_file_mode", "write_atomically"]


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *,
                     durable: bool = False) -> Path:
    """Create ``path`` (and its folder) from what ``write`` writes to a binary handle. ``durable``: fsync the
    data before the rename and the folder after it, so the new file survives a power cut too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp_name, new_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
