"""Atomic writes: the temporary file beside the target, fsync of the data and of the folder when durable."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from models.atomic_files import new_file_mode, write_atomically


def test_the_data_is_written_beside_the_target_under_a_hidden_temporary_name(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def write(handle: BinaryIO) -> None:
        seen.append(sorted(os.listdir(tmp_path / "out")))
        handle.write(b"new")

    path = write_atomically(tmp_path / "out" / "mask.png", write)
    assert path == tmp_path / "out" / "mask.png" and path.read_bytes() == b"new"
    (name,) = seen[0]
    assert name.startswith(".mask.png.") and name.endswith(".tmp")
    assert os.listdir(tmp_path / "out") == ["mask.png"]


def test_a_durable_write_syncs_the_data_then_the_folder(tmp_path: Path, fsyncs: list[str]) -> None:
    write_atomically(tmp_path / "c.pt", lambda handle: handle.write(b"x" * 10), durable=True)
    assert fsyncs == ["file", "folder"]


def test_a_plain_write_does_not_sync(tmp_path: Path, fsyncs: list[str]) -> None:
    write_atomically(tmp_path / "c.pt", lambda handle: handle.write(b"x"))
    assert fsyncs == []


def test_the_synced_data_is_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handle is flushed before fsync: every byte written is synced, not what the buffer let out."""
    sizes: list[int] = []
    real = os.fsync

    def recording(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            sizes.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    write_atomically(tmp_path / "c.pt", lambda handle: handle.write(b"y" * 100), durable=True)
    assert sizes == [100]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "c.pt"
    target.write_bytes(b"old")

    def failing(handle: BinaryIO) -> None:
        handle.write(b"half")
        raise KeyboardInterrupt  # not only Exceptions: Ctrl-C mid-write too

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, failing, durable=True)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["c.pt"]


def test_the_new_file_gets_the_mode_open_would_give(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert new_file_mode() == 0o640
        path = write_atomically(tmp_path / "m.png", lambda handle: handle.write(b"m"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert os.umask(0o027) == 0o027  # reading the umask left it as it was
    finally:
        os.umask(old)
