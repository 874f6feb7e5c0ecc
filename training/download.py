"""Download and extract the Oxford-IIIT Pet dataset into its official layout.

After :func:`download_dataset` the data folder holds ``images/*.jpg`` and
``annotations/{trimaps/*.png,trainval.txt,test.txt,list.txt}``. The ``*.tar.gz``
archives are kept next to them by default (so a re-extraction needs no network);
they are not needed for training and can be deleted, or skipped with
``keep_archives=False``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
RETRY_BACKOFF_S = 1.0  # first pause between attempts; doubles each time, capped at 30 s
_EXTRACT_PREFIX = ".petseg-extract-"
_BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
# Network failures worth another attempt (HTTPError is a URLError: 4xx are filtered out before).
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Archive:
    """One downloadable archive and the relative path proving it was extracted."""

    name: str
    url: str
    md5: str
    marker: str


OFFICIAL_ARCHIVES: tuple[Archive, ...] = (
    Archive("images.tar.gz", _BASE_URL + "images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", "images"),
    Archive(
        "annotations.tar.gz",
        _BASE_URL + "annotations.tar.gz",
        "95a8c909bbe2e81eed6a22bccdf3f68f",
        "annotations/trimaps",
    ),
)


class DownloadError(RuntimeError):
    """A download, verification or extraction failure, with the file or url involved."""


def download_dataset(
    data_path: Path,
    archives: Sequence[Archive] = OFFICIAL_ARCHIVES,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    keep_archives: bool = True,
) -> None:
    """Download, verify and extract ``archives`` into ``data_path``.

    Idempotent: does nothing (logs that) when every archive's marker already exists
    with content. ``retries`` is the number of extra attempts after a transient network
    failure; each attempt resumes the ``.part`` file. ``timeout`` is per socket operation.
    """
    data_path = Path(data_path)
    if all(_has_content(data_path / a.marker) for a in archives):
        logger.info("Dataset already present in %s, nothing to download", data_path)
        return
    _ensure_writable(data_path)
    for stale in data_path.glob(_EXTRACT_PREFIX + "*"):  # left by a killed extraction
        shutil.rmtree(stale, ignore_errors=True)
    for archive in archives:
        if _has_content(data_path / archive.marker):
            logger.info("%s already extracted (%s exists), skipping", archive.name, archive.marker)
            continue
        path = _fetch(archive, data_path, progress=progress, timeout=timeout, retries=retries)
        _extract(path, data_path)
        if not _has_content(data_path / archive.marker):
            raise DownloadError(f"{archive.name} was extracted but {archive.marker} is missing or empty")
        if not keep_archives:
            path.unlink()
    logger.info("Dataset ready in %s", data_path)


def _has_content(path: Path) -> bool:
    return any(path.iterdir()) if path.is_dir() else path.is_file() and path.stat().st_size > 0


def _ensure_writable(data_path: Path) -> None:
    try:
        data_path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_path):
            pass
    except OSError as exc:
        raise DownloadError(f"data folder {data_path} is not writable: {exc}") from exc


def _fetch(archive: Archive, data_path: Path, *, progress: bool, timeout: float, retries: int) -> Path:
    """Return the path of a verified copy of ``archive``, downloading it if needed."""
    return fetch_file(archive.url, data_path / archive.name, algorithm="md5", digest=archive.md5,
                      progress=progress, timeout=timeout, retries=retries)


def fetch_file(url: str, final: Path, *, algorithm: str, digest: str, progress: bool = True,
               timeout: float = 60.0, retries: int = 3) -> Path:
    """Download ``url`` to ``final`` unless a verified copy is there; resumable through ``final.part``.

    The file is verified with ``hashlib``'s ``algorithm``: its hex digest must start with ``digest`` (a whole
    digest, or a published prefix such as the 8 sha256 characters in torchvision's weight file names). A bad
    download is deleted and reported; the verified file appears under its final name atomically.
    """
    digest = digest.lower()
    if final.is_file():
        logger.info("Verifying %s of existing %s", algorithm, final)
        if _hexdigest(final, algorithm).startswith(digest):
            logger.info("%s already downloaded, checksum OK", final)
            return final
        logger.warning("Existing %s has a wrong checksum, downloading it again", final)
        final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    logger.info("Downloading %s to %s", url, final)
    _download(url, part, progress=progress, timeout=timeout, retries=retries)
    logger.info("Verifying %s of %s", algorithm, part)
    actual = _hexdigest(part, algorithm)
    if not actual.startswith(digest):
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {final.name} from {url}: expected {algorithm} {digest}, "
            f"got {actual}; the bad file was deleted, run again to re-download"
        )
    os.replace(part, final)
    return final


def _download(url: str, part: Path, *, progress: bool, timeout: float, retries: int) -> None:
    attempts = max(0, retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            _download_once(url, part, progress=progress, timeout=timeout)
            return
        except _TRANSIENT as exc:
            reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
            if attempt == attempts:
                raise DownloadError(f"cannot download {url} after {attempts} attempt(s): {reason}") from exc
            pause = min(RETRY_BACKOFF_S * 2 ** (attempt - 1), 30.0)
            logger.warning("Download of %s failed (%s); retry %d/%d", url, reason, attempt, attempts - 1)
            time.sleep(pause)
        except OSError as exc:  # local disk problems are not worth retrying
            raise DownloadError(f"I/O error while downloading {url} to {part}: {exc}") from exc


def _download_once(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """One HTTP request, appending to ``part`` when the server honours ``Range``."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "petseg-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            logger.info("Server reports %s already complete (HTTP 416)", part)
            return
        if exc.code >= 500 or exc.code in (408, 429):
            raise  # transient, retried
        raise DownloadError(f"HTTP {exc.code} ({exc.reason}) for {url}") from exc
    with response:
        if offset and response.status != 206:
            logger.info("Server ignored the Range request, restarting %s from zero", part)
            offset = 0
        elif offset and not re.match(rf"bytes {offset}-", response.headers.get("Content-Range", "")):
            part.unlink()  # the body would not fit our part: start over on the next attempt
            raise ConnectionError(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = _stream(response, part, offset, expected, progress)
    if expected is not None and received < expected:
        raise ConnectionError(f"connection closed after {offset + received} bytes of {offset + expected}")


def _stream(
    response: http.client.HTTPResponse, part: Path, offset: int, expected: int | None, progress: bool
) -> int:
    total = offset + expected if expected is not None else None
    received = 0
    name = part.name.removesuffix(".part")
    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name, disable=not progress)
    with part.open("ab" if offset else "wb") as out, bar:
        while chunk := response.read(CHUNK_SIZE):
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def _hexdigest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive_path: Path, data_path: Path) -> None:
    """Extract into a hidden temporary folder, then move the top-level entries into place."""
    logger.info("Extracting %s into %s", archive_path, data_path)
    with tempfile.TemporaryDirectory(prefix=_EXTRACT_PREFIX, dir=data_path) as tmp:
        root = Path(tmp)
        try:
            with tarfile.open(archive_path, mode="r:gz") as tar:
                members = tar.getmembers()
                _check_members(members, root)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: tarfile's own checks as well
                    tar.extractall(root, members=members, filter="data")
                else:
                    tar.extractall(root, members=members)
        except getattr(tarfile, "FilterError", ()) as exc:
            raise DownloadError(f"refusing to extract {archive_path.name}: {exc}") from exc
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DownloadError(f"{archive_path} is not a valid gzip-compressed tar archive: {exc}") from exc
        except OSError as exc:
            raise DownloadError(f"cannot extract {archive_path} into {data_path}: {exc}") from exc
        _merge_into(root, data_path)


def _check_members(members: Sequence[tarfile.TarInfo], root: Path) -> None:
    """Refuse members that would write outside ``root`` (path traversal, links, devices)."""
    root_str = os.path.realpath(root)
    symlinks = {os.path.normpath(m.name) for m in members if m.issym()}
    for member in members:
        name = os.path.normpath(member.name)
        problem = None
        if member.ischr() or member.isblk() or member.isfifo():
            problem = "device or FIFO file"
        elif not _is_inside(root_str, member.name):
            problem = "path escapes the data folder"
        elif any(str(parent) in symlinks for parent in Path(name).parents):
            problem = "path goes through a symlink"
        elif member.issym() and not _is_inside(root_str, str(Path(name).parent / member.linkname)):
            problem = f"symlink to {member.linkname!r} points outside the data folder"
        elif member.islnk() and not _is_inside(root_str, member.linkname):
            problem = f"hard link to {member.linkname!r} points outside the data folder"
        if problem:
            raise DownloadError(f"refusing to extract member {member.name!r}: {problem}")


def _is_inside(root: str, relative: str) -> bool:
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        return False
    resolved = os.path.realpath(os.path.join(root, relative))
    return os.path.commonpath([root, resolved]) == root


def _merge_into(src: Path, dest: Path) -> None:
    """Move ``src``'s entries into ``dest``; a new (or empty) folder is moved in one rename.

    So the marker folder appears complete or not at all, even if the process is killed.
    """
    for entry in src.iterdir():
        target = dest / entry.name
        try:
            if entry.is_dir() and target.is_dir() and (target.is_symlink() or any(target.iterdir())):
                _merge_into(entry, target)
            else:
                os.replace(entry, target)
        except OSError as exc:
            raise DownloadError(f"cannot move extracted {entry.name} to {target}: {exc}") from exc
