"""The ``petseg segment`` client against the real app (in-process) and against nothing at all."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.client import main
from tests.factories import blob_image, jpeg_bytes, png_bytes
from tests.server import free_port


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    paths = []
    for i, (w, h) in enumerate([(80, 60), (50, 70)]):
        path = tmp_path / f"pet{i}.jpg"
        path.write_bytes(jpeg_bytes(blob_image(w, h, seed=i)[0]))
        paths.append(path)
    return paths


def test_client_writes_masks_and_prints_a_table(client: TestClient, photos: list[Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "masks"
    code = main(["segment", *map(str, photos), "--out", str(out), "--overlay"], client=client)
    assert code == 0
    for photo in photos:
        mask = Image.open(out / f"{photo.stem}_mask.png")
        assert mask.size == Image.open(photo).size
        assert (out / f"{photo.stem}_overlay.png").is_file()
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["file", "size", "foreground", "dice"]
    assert table[1].split()[:2] == ["pet0.jpg", "80x60"] and table[1].split()[-1] == "-"


def test_client_fills_dice_with_a_ground_truth(client: TestClient, photos: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    main(["segment", str(photos[0]), "--out", str(tmp_path / "a")], client=client)
    mask = np.asarray(Image.open(tmp_path / "a" / "pet0_mask.png"))
    truth = tmp_path / "truth.png"
    truth.write_bytes(png_bytes(mask))
    capsys.readouterr()
    assert main(["segment", str(photos[0]), "--ground-truth", str(truth), "--out", str(tmp_path / "b")],
                client=client) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "1.000"


def test_client_unreachable_service_exits_2(photos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["segment", str(photos[0]), "--url", url, "--timeout", "5"]) == 2
    assert f"cannot reach petseg at {url}" in capsys.readouterr().err


def test_client_missing_file_exits_2(client: TestClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", str(tmp_path / "nope.jpg")], client=client) == 2
    assert "file not found" in capsys.readouterr().err


def test_client_reports_the_services_4xx(client: TestClient, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a photo")
    assert main(["segment", str(bogus)], client=client) == 2
    assert "415" in capsys.readouterr().err
