"""Tests for training.download against a real local HTTP server (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from training import download
from training.download import Archive, DownloadError, download_dataset

PetArchives = tuple[Archive, Archive]


@dataclass
class ServerState:
    """What the server serves and what it saw; tests mutate it directly."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # the next GET sends only this many body bytes, then hangs up
    ignore_range: bool = False
    fail_statuses: list[int] = field(default_factory=list)  # answered (in order) before serving normally
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class RangeHandler(BaseHTTPRequestHandler):
    server: PetServer

    def do_GET(self) -> None:
        state = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        data = state.files.get(self.path)
        if data is None or state.fail_statuses:
            self.send_error(state.fail_statuses.pop(0) if data is not None else 404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not state.ignore_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_after is not None:
            body, state.cut_after = body[: state.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean


class PetServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.state = ServerState()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, name: str, data: bytes, md5: str | None = None, marker: str = "images") -> Archive:
        self.state.files[f"/{name}"] = data
        digest = md5 or hashlib.md5(data).hexdigest()
        return Archive(name=name, url=f"{self.base_url}/{name}", md5=digest, marker=marker)


@pytest.fixture
def server() -> Iterator[PetServer]:
    srv = PetServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)


def _tar_gz(entries: dict[str, bytes], tweak: dict[str, dict[str, object]] | None = None) -> bytes:
    """A tar.gz holding ``entries``; ``tweak`` sets TarInfo attributes (type, linkname...) per name."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            for attr, value in (tweak or {}).get(name, {}).items():
                setattr(info, attr, value)
            tar.addfile(info, io.BytesIO(content) if info.isfile() else None)
    return buf.getvalue()


def _image_bytes(mode: str, fmt: str, value: int | tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (8, 8), value).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def pet_archives(server: PetServer) -> PetArchives:
    """Tiny images.tar.gz / annotations.tar.gz in the official layout, served by ``server``."""
    names = ["Abyssinian_1", "beagle_2"]
    images = {f"images/{n}.jpg": _image_bytes("RGB", "JPEG", (200, 120, 40)) for n in names}
    annotations = {f"annotations/trimaps/{n}.png": _image_bytes("L", "PNG", 1) for n in names}
    annotations |= {
        "annotations/trainval.txt": b"Abyssinian_1 1 1 1\n",
        "annotations/test.txt": b"beagle_2 13 2 1\n",
        "annotations/list.txt": b"#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\nbeagle_2 13 2 1\n",
    }
    return (
        server.serve("images.tar.gz", _tar_gz(images)),
        server.serve("annotations.tar.gz", _tar_gz(annotations), marker="annotations/trimaps"),
    )


def _assert_official_layout(data: Path) -> None:
    assert sorted(p.name for p in (data / "images").glob("*.jpg")) == ["Abyssinian_1.jpg", "beagle_2.jpg"]
    assert sorted(p.name for p in (data / "annotations/trimaps").glob("*.png")) == [
        "Abyssinian_1.png",
        "beagle_2.png",
    ]
    for name in ("trainval.txt", "test.txt", "list.txt"):
        assert (data / "annotations" / name).is_file()
    with Image.open(data / "images/beagle_2.jpg") as img:
        assert img.size == (8, 8)
    assert not list(data.glob(".petseg-extract-*")) and not list(data.glob("*.part"))


def test_download_fresh_gives_official_layout(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    download_dataset(data, pet_archives, progress=True, timeout=5)
    _assert_official_layout(data)
    assert (data / "images.tar.gz").is_file() and (data / "annotations.tar.gz").is_file()
    assert server.state.requests == [("/images.tar.gz", None), ("/annotations.tar.gz", None)]


def test_download_second_call_is_noop(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    download_dataset(tmp_path, pet_archives, progress=False, timeout=5)
    server.state.requests.clear()
    with caplog.at_level(logging.INFO, logger="training.download"):
        download_dataset(tmp_path, pet_archives, progress=False, timeout=5)
    assert server.state.requests == []
    assert "already present" in caplog.text


def test_download_interrupted_resumes_with_range(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path
) -> None:
    images = pet_archives[0]
    cut = len(server.state.files["/images.tar.gz"]) // 2
    server.state.cut_after = cut
    download_dataset(tmp_path, [images], progress=False, timeout=5, retries=2)
    assert server.state.requests == [("/images.tar.gz", None), ("/images.tar.gz", f"bytes={cut}-")]
    assert cut > 0
    assert (tmp_path / "images.tar.gz").read_bytes() == server.state.files["/images.tar.gz"]
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 2


def test_download_resumes_part_left_on_disk(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path
) -> None:
    images = pet_archives[0]
    payload = server.state.files["/images.tar.gz"]
    (tmp_path / "images.tar.gz.part").write_bytes(payload[:100])
    download_dataset(tmp_path, [images], progress=False, timeout=5)
    assert server.state.requests == [("/images.tar.gz", "bytes=100-")]
    assert (tmp_path / "images.tar.gz").read_bytes() == payload
    assert not (tmp_path / "images.tar.gz.part").exists()


def test_download_restarts_when_server_ignores_range(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path
) -> None:
    server.state.ignore_range = True
    (tmp_path / "images.tar.gz.part").write_bytes(b"stale bytes from another file")
    download_dataset(tmp_path, [pet_archives[0]], progress=False, timeout=5)
    assert (tmp_path / "images.tar.gz").read_bytes() == server.state.files["/images.tar.gz"]


def test_download_complete_part_answered_416_is_verified(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path
) -> None:
    (tmp_path / "images.tar.gz.part").write_bytes(server.state.files["/images.tar.gz"])
    download_dataset(tmp_path, [pet_archives[0]], progress=False, timeout=5)
    size = len(server.state.files["/images.tar.gz"])
    assert server.state.requests == [("/images.tar.gz", f"bytes={size}-")]
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 2


def test_download_existing_archive_not_downloaded_again(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path
) -> None:
    (tmp_path / "images.tar.gz").write_bytes(server.state.files["/images.tar.gz"])
    download_dataset(tmp_path, [pet_archives[0]], progress=False, timeout=5, keep_archives=False)
    assert server.state.requests == []
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 2
    assert not (tmp_path / "images.tar.gz").exists()


def test_download_checksum_mismatch_raises_and_removes_file(server: PetServer, tmp_path: Path) -> None:
    archive = server.serve("images.tar.gz", _tar_gz({"images/a.jpg": b"x"}), md5="0" * 32)
    with pytest.raises(DownloadError, match=r"checksum.*images\.tar\.gz") as excinfo:
        download_dataset(tmp_path, [archive], progress=False, timeout=5)
    assert "0" * 32 in str(excinfo.value) and "md5" in str(excinfo.value)
    assert not (tmp_path / "images.tar.gz").exists() and not (tmp_path / "images.tar.gz.part").exists()
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_download_rejects_path_traversal(server: PetServer, tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    evil = str(tmp_path / "evil.txt") if kind == "absolute" else "../evil.txt"
    archive = server.serve("images.tar.gz", _tar_gz({"images/ok.jpg": b"ok", evil: b"pwned"}))
    with pytest.raises(DownloadError, match="evil.txt"):
        download_dataset(data, [archive], progress=False, timeout=5)
    assert not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert not (data / "images").exists() and not list(data.glob(".petseg-extract-*"))


def test_download_rejects_symlink_outside(server: PetServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    tweak = {"images/link": {"type": tarfile.SYMTYPE, "linkname": "../../outside"}}
    archive = server.serve("images.tar.gz", _tar_gz({"images/a.jpg": b"a", "images/link": b""}, tweak))
    with pytest.raises(DownloadError, match="images/link.*symlink"):
        download_dataset(data, [archive], progress=False, timeout=5)
    assert not (data / "images").exists()


def test_download_rejects_device_file(server: PetServer, tmp_path: Path) -> None:
    tweak = {"images/null": {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}}
    archive = server.serve("images.tar.gz", _tar_gz({"images/null": b""}, tweak))
    with pytest.raises(DownloadError, match="images/null.*device"):
        download_dataset(tmp_path, [archive], progress=False, timeout=5)


def test_download_not_a_tar_gz(server: PetServer, tmp_path: Path) -> None:
    archive = server.serve("images.tar.gz", b"<html>not an archive</html>")
    with pytest.raises(DownloadError, match="not a valid gzip-compressed tar"):
        download_dataset(tmp_path, [archive], progress=False, timeout=5)


def test_download_server_error_is_retried(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path
) -> None:
    server.state.fail_statuses = [503]
    download_dataset(tmp_path, [pet_archives[0]], progress=False, timeout=5, retries=1)
    assert [path for path, _ in server.state.requests] == ["/images.tar.gz", "/images.tar.gz"]
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 2


def test_download_server_error_gives_up_after_retries(
    server: PetServer, pet_archives: PetArchives, tmp_path: Path
) -> None:
    server.state.fail_statuses = [503, 503]
    with pytest.raises(DownloadError, match="503") as excinfo:
        download_dataset(tmp_path, [pet_archives[0]], progress=False, timeout=5, retries=1)
    assert pet_archives[0].url in str(excinfo.value) and "2 attempt" in str(excinfo.value)


def test_download_http_404(server: PetServer, tmp_path: Path) -> None:
    archive = Archive("missing.tar.gz", f"{server.base_url}/missing.tar.gz", "0" * 32, "images")
    with pytest.raises(DownloadError, match="404") as excinfo:
        download_dataset(tmp_path, [archive], progress=False, timeout=5)
    assert archive.url in str(excinfo.value)
    assert len(server.state.requests) == 1  # a 404 is not retried


def test_download_unreachable_server_gives_up_after_its_retries(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection is retried ``retries`` times with the backoff's pauses, then named: counted, not
    timed."""
    pauses: list[float] = []
    monkeypatch.setattr(download.time, "sleep", pauses.append)
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 1.5)  # the other tests run without pauses
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    archive = Archive("images.tar.gz", f"http://127.0.0.1:{port}/images.tar.gz", "0" * 32, "images")
    with pytest.raises(DownloadError, match=re.escape(archive.url) + r" after 3 attempt\(s\)"):
        download_dataset(tmp_path, [archive], progress=False, timeout=1, retries=2)
    assert pauses == [1.5, 3.0]


def test_download_data_path_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(DownloadError, match="not writable"):
        download_dataset(blocker / "data", [Archive("a.tar.gz", "http://127.0.0.1:9/a", "0" * 32, "a")])
