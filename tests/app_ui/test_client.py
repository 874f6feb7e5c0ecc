"""``petseg segment``: the client against the real app in-process (a TestClient is an httpx.Client), and
against nothing at all."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.client import Rendering, build_parser, describe_transport_error, main, watch_folder
from tests.factories import blob_image, jpeg_bytes, png_bytes
from tests.server import free_port

SIZES = [(80, 60), (50, 70)]


closed_port = free_port  # bound, then released: nothing listens on it


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for i, (w, h) in enumerate(SIZES):
        path = folder / f"pet{i}.jpg"
        path.write_bytes(jpeg_bytes(blob_image(w, h, seed=i)[0]))
        paths.append(path)
    return paths


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_writes_masks_of_the_images_size_and_prints_a_table(client: TestClient, photos: list[Path],
                                                            tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "masks"
    assert main(["segment", *map(str, photos), "--out", str(out), "--overlay"], client=client) == 0
    for photo, size in zip(photos, SIZES, strict=True):
        mask = Image.open(out / f"{photo.stem}_mask.png")
        assert mask.size == size and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        overlay = Image.open(out / f"{photo.stem}_overlay.png")
        assert overlay.size == size
    captured = capsys.readouterr()
    rows = table(captured.out)
    assert rows[0] == ["file", "size", "foreground", "dice"]
    assert [row[1] for row in rows[1:]] == ["80x60", "50x70"]
    assert [Path(row[0]).name for row in rows[1:]] == ["pet0.jpg", "pet1.jpg"]
    assert all(row[2].endswith("%") and row[3] == "-" for row in rows[1:])
    lines = captured.out.strip().splitlines()
    assert len({len(line) for line in lines}) == 1, "columns are aligned (numbers right-aligned)"


def test_masks_go_next_to_the_images_by_default(client: TestClient, photos: list[Path]) -> None:
    assert main(["segment", str(photos[0])], client=client) == 0
    assert Image.open(photos[0].with_name("pet0_mask.png")).size == SIZES[0]
    assert not photos[0].with_name("pet0_overlay.png").exists()


def test_ground_truth_fills_the_dice_column(client: TestClient, photos: list[Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first"
    assert main(["segment", *map(str, photos), "--out", str(first)], client=client) == 0
    truths = []
    for photo in photos:  # the service's own masks as ground truth: Dice 1
        truth = tmp_path / "truths" / f"{photo.stem}.png"
        truth.parent.mkdir(exist_ok=True)
        truth.write_bytes(png_bytes(np.asarray(Image.open(first / f"{photo.stem}_mask.png"))))
        truths.append(truth)
    capsys.readouterr()

    assert main(["segment", *map(str, photos), "--ground-truth", *map(str, truths),
                 "--out", str(tmp_path / "a")], client=client) == 0
    assert [row[3] for row in table(capsys.readouterr().out)[1:]] == ["1.000", "1.000"]

    # A folder: ground truths share the image's stem; an image without one gets '-'.
    truths[1].unlink()
    assert main(["segment", *map(str, photos), "--ground-truth", str(truths[0].parent), "--out",
                 str(tmp_path / "b")], client=client) == 0
    assert [row[3] for row in table(capsys.readouterr().out)[1:]] == ["1.000", "-"]


def test_threshold_is_sent(client: TestClient, photos: list[Path],
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", str(photos[0]), "--threshold", "0"], client=client) == 0
    assert table(capsys.readouterr().out)[1][2] == "100.0%"
    assert main(["segment", str(photos[0]), "--threshold", "1"], client=client) == 0
    assert table(capsys.readouterr().out)[1][2] == "0.0%"


def test_unreachable_service_exits_2_with_one_line(photos: list[Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["segment", str(photos[0]), "--url", url, "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"petseg: cannot reach petseg at {url}: ") and "\n" not in err


def test_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSEG_URL", "http://gpu-box:9000")
    assert build_parser().parse_args(["segment", "a.jpg"]).url == "http://gpu-box:9000"
    monkeypatch.delenv("PETSEG_URL")
    assert build_parser().parse_args(["segment", "a.jpg"]).url == "http://127.0.0.1:8000"


def test_missing_files_exit_2(client: TestClient, photos: list[Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", str(photos[0]), str(tmp_path / "nope.jpg")], client=client) == 2
    assert f"image not found: {tmp_path / 'nope.jpg'}" in capsys.readouterr().err
    assert not photos[0].with_name("pet0_mask.png").exists(), "nothing is sent before the inputs are checked"
    assert main(["segment", str(photos[0]), "--ground-truth", str(tmp_path / "gt.png")], client=client) == 2
    assert "ground truth not found" in capsys.readouterr().err
    assert main(["segment", *map(str, photos), "--ground-truth", str(photos[0])], client=client) == 2
    assert "1 file(s) for 2 image(s)" in capsys.readouterr().err


def test_4xx_answers_exit_2_with_the_detail(client: TestClient, photos: list[Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a photo")
    assert main(["segment", str(bogus)], client=client) == 2
    err = capsys.readouterr().err
    assert "the service answered 415" in err and "not an image format" in err

    wrong_size = tmp_path / "small.png"
    wrong_size.write_bytes(png_bytes(np.zeros((5, 5), np.uint8)))
    assert main(["segment", str(photos[0]), "--ground-truth", str(wrong_size)], client=client) == 2
    assert "the service answered 422" in capsys.readouterr().err


def test_a_refused_photo_does_not_stop_the_batch(client: TestClient, photos: list[Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "photos" / "bad.jpg"
    bad.write_text("not a photo")
    out = tmp_path / "masks"
    assert main(["segment", str(photos[0]), str(bad), str(photos[1]), "--out", str(out)], client=client) == 2
    assert sorted(p.name for p in out.iterdir()) == ["pet0_mask.png", "pet1_mask.png"]
    captured = capsys.readouterr()
    assert [Path(row[0]).name for row in table(captured.out)[1:]] == ["pet0.jpg", "pet1.jpg"]
    assert f"{bad}: the service answered 415" in captured.err
    assert "2 of 3 photo(s) segmented, 1 not" in captured.err


def test_a_service_failure_on_one_photo_exits_1_after_the_others(photos: list[Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import base64

    import httpx

    mask = base64.b64encode(png_bytes(np.zeros((4, 4), np.uint8))).decode()

    def answer(request: httpx.Request) -> httpx.Response:
        if b'filename="pet0.jpg"' in request.read():
            return httpx.Response(500, json={"detail": "model crashed"})
        return httpx.Response(200, json={"mask_png": mask, "output_png": None, "width": 4, "height": 4,
                                         "foreground_fraction": 0.0, "dice": None})

    fake = httpx.Client(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(answer))
    assert main(["segment", *map(str, photos), "--out", str(tmp_path / "m")], client=fake) == 1
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["pet1_mask.png"]
    assert "pet0.jpg: the service answered 500: model crashed" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_sending(
        photos: list[Path], tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    sent = []
    fake = httpx.Client(base_url="http://127.0.0.1:9",
                        transport=httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(500)))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = {"file": blocker, "under_file": blocker / "masks", "read_only": tmp_path / "locked" / "masks"}[where]
    if where == "read_only":  # as root a mode of 0o555 would not stop the write: the permission check says no
        (tmp_path / "locked").mkdir()
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "locked"
                            and real_access(path, mode))
    for argv in (["segment", *map(str, photos), "--out", str(out)],
                 ["segment", "--watch", str(photos[0].parent), "--out", str(out), "--interval", "0.1"]):
        assert main(argv, client=fake) == 2
        err = capsys.readouterr().err
        assert f"cannot write into {out}: " in err and "\n" not in err.strip()
    assert sent == [], "nothing is sent before the outputs are checked"


def test_bad_threshold_is_a_usage_error(photos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(photos[0]), "--threshold", "1.5"])
    assert exit_info.value.code == 2
    assert "not in [0, 1]" in capsys.readouterr().err


# ---------------------------------------------------------------- cutouts
def test_cutout_soft_on_a_colour_cropped(client: TestClient, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cutouts"
    assert main(["segment", str(photos[0]), "--out", str(out), "--cutout", "--soft", "--background", "#ffffff",
                 "--threshold", "0.3"], client=client) == 0
    cutout = Image.open(out / "pet0_cutout.png")
    assert cutout.mode == "RGB" and cutout.size == SIZES[0]
    assert Image.open(out / "pet0_mask.png").size == SIZES[0]

    assert main(["segment", str(photos[0]), "--out", str(out / "cropped"), "--cutout", "--crop",
                 "--threshold", "0.3"], client=client) == 0
    cropped = Image.open(out / "cropped" / "pet0_cutout.png")
    assert cropped.mode == "RGBA"
    assert cropped.size[0] <= SIZES[0][0] and cropped.size[1] <= SIZES[0][1]
    assert Image.open(out / "cropped" / "pet0_mask.png").size == SIZES[0]  # the mask stays whole


def test_background_image_is_sent(client: TestClient, photos: list[Path], tmp_path: Path) -> None:
    background = tmp_path / "beach.png"
    background.write_bytes(png_bytes(np.full((10, 10, 3), (0, 0, 255), np.uint8)))
    assert main(["segment", str(photos[0]), "--out", str(tmp_path), "--cutout", "--background-image",
                 str(background), "--threshold", "1"], client=client) == 0
    cutout = np.asarray(Image.open(tmp_path / "pet0_cutout.png"))
    assert (cutout == (0, 0, 255)).all()  # threshold 1: no pet, all background


@pytest.mark.parametrize(("flags", "message"), [
    (["--soft"], "--soft needs --cutout"), (["--background", "#fff"], "--background needs --cutout"),
    (["--crop-margin", "5"], "--crop-margin needs --crop"),
    (["--cutout", "--background", "#fff", "--background-image", "x.png"], "not both"),
    (["--cutout", "--background-image", "missing.png"], "background image not found"),
])
def test_flag_combinations_are_checked_before_sending(client: TestClient, photos: list[Path], flags: list[str],
                                                      message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", str(photos[0]), *flags], client=client) == 2
    assert message in capsys.readouterr().err
    assert not photos[0].with_name("pet0_mask.png").exists()


def test_service_refusals_of_options_exit_2(client: TestClient, photos: list[Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", str(photos[0]), "--cutout", "--background", "blue"], client=client) == 2
    err = capsys.readouterr().err
    assert "the service answered 422" in err and "background: " in err


def test_overlay_and_cutout_are_one_or_the_other(photos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(photos[0]), "--overlay", "--cutout"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------- --watch
class CountingClient:
    """Counts the requests ``watch_folder`` sends through the real app."""

    def __init__(self, client: TestClient) -> None:
        self.client, self.posted = client, []

    def post(self, url: str, **kwargs: object):  # noqa: ANN201
        self.posted.append(kwargs["files"]["image"][0])  # type: ignore[index]
        return self.client.post(url, **kwargs)


class CountingStop(threading.Event):
    """watch_folder's stop event, counting its looks at the folder (one wait between two looks)."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.looks += 1
        return super().wait(timeout)


def wait_for(condition, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_watch_segments_photos_as_they_arrive_and_skips_those_done(client: TestClient, tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    first = inbox / "first.jpg"
    first.write_bytes(jpeg_bytes(blob_image(40, 30, seed=1)[0]))
    done = inbox / "done.png"  # already segmented: its outputs exist and are newer than it
    done.write_bytes(png_bytes(blob_image(40, 30, seed=2)[0]))
    out.mkdir()
    for name in ("done_mask.png", "done_cutout.png"):
        (out / name).write_bytes(b"already here")
    (inbox / "notes.txt").write_text("not a photo: never sent")
    counting = CountingClient(client)
    stop, lines = CountingStop(), []
    worker = threading.Thread(target=lambda: lines.append(watch_folder(
        counting, inbox, out=out, rendering=Rendering(cutout=True, soft=True), interval=0.1, stop=stop,
        report=lines.append)), daemon=True)
    worker.start()
    try:
        wait_for(lambda: (out / "first_cutout.png").exists())
        assert Image.open(out / "first_mask.png").size == (40, 30)
        assert Image.open(out / "first_cutout.png").mode == "RGBA"

        later = inbox / "later.png"  # arrives while watching: written elsewhere, moved in whole
        staging = tmp_path / "later.png"
        staging.write_bytes(png_bytes(blob_image(50, 20, seed=3)[0]))
        os.replace(staging, later)
        bogus = inbox / "broken.jpg"
        bogus.write_text("this is not a JPEG")
        wait_for(lambda: (out / "later_cutout.png").exists() and any("broken.jpg" in str(x) for x in lines))
        looked = stop.looks
        wait_for(lambda: stop.looks >= looked + 5)  # five more looks at the folder: nothing is sent again
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert sorted(counting.posted) == ["broken.jpg", "first.jpg", "later.png"]
    assert (out / "done_mask.png").read_bytes() == b"already here"
    assert lines[-1] == 2  # watch_folder's answer: two photos segmented
    assert any("415" in str(line) and "broken.jpg" in str(line) for line in lines)
    assert not list(out.glob(".*.tmp")), "no temporary file left behind"


def test_watch_refuses_a_missing_folder_and_out_inside_it(client: TestClient, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", "--watch", str(tmp_path / "nope")], client=client) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["segment", "--watch", str(tmp_path), "--out", str(tmp_path)], client=client) == 2
    assert "must not be the watched folder" in capsys.readouterr().err
    assert main(["segment", "--watch", str(tmp_path), str(tmp_path / "a.jpg")], client=client) == 2
    assert "takes no IMAGE" in capsys.readouterr().err
    assert main(["segment"], client=client) == 2
    assert "give IMAGE files, or --watch DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", "--watch", str(tmp_path), "--interval", "0"])
    assert "not between 0.1 and 60 seconds" in capsys.readouterr().err


@pytest.mark.parametrize(("error", "reason"), [(httpx.ConnectError("refused"), "refused"),
                                               (httpx.ConnectError(""), "ConnectError")])
def test_an_unreachable_service_is_named_with_the_errors_text_or_its_type(error: Exception,
                                                                          reason: str) -> None:
    assert describe_transport_error(error, "http://127.0.0.1:9", 5.0) == (
        f"cannot reach petseg at http://127.0.0.1:9: {reason}")
