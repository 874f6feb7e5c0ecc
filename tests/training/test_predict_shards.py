"""petseg-predict --shard I/N: disjoint shares that cover a folder once, resumable runs, clear errors."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.engine.segmenter import Segmenter
from tests.factories import blob_image
from training import predict
from training.shards import INDEX_VARIABLE, Shard, parse_shard, shard_of, take_shard

CPU = ["--device", "cpu", "--precision", "fp32"]
# Nine names whose sha1 spreads over both halves (checked below), so two shards are both non-empty.
NAMES = [f"pet_{i:02d}" for i in range(9)]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(NAMES):
        image, _ = blob_image(40 + i, 32, seed=i)
        Image.fromarray(image).save(folder / f"{name}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module", autouse=True)
def tiny_model_loaded_once(tiny_checkpoint: Path) -> Iterator[None]:
    """Every run here predicts with the tiny checkpoint: load it once for the module (a few seconds a load on
    a busy 2-core CPU) and hand the same engine to each run. Any other path goes through the real loader."""
    real_from_file = Segmenter.from_file
    engine = real_from_file(tiny_checkpoint, device="cpu", precision="fp32", allow_untrained=True)

    def from_file(path: str, **kwargs: object) -> Segmenter:
        return engine if Path(path) == tiny_checkpoint else real_from_file(path, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Segmenter, "from_file", from_file)
        yield


def run_predict(checkpoint: Path, photos: Path, out: Path, *extra: str) -> int:
    return predict.main(["--model", str(checkpoint), str(photos), "--out", str(out), *CPU, *extra])


def masks_in(folder: Path) -> set[str]:
    return {p.name.removesuffix("_mask.png") for p in folder.glob("*_mask.png")}


# ------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(("text", "expected"), [("0/1", Shard(0, 1)), ("0/4", Shard(0, 4)),
                                                 ("3/4", Shard(3, 4)), (" 2/3 ", Shard(2, 3))])
def test_parse_shard_reads_index_and_count(text: str, expected: Shard) -> None:
    assert parse_shard(text, environ={}) == expected


def test_parse_shard_auto_takes_the_job_completion_index() -> None:
    assert parse_shard("auto/8", environ={INDEX_VARIABLE: "5"}) == Shard(5, 8)


@pytest.mark.parametrize(("text", "environ", "message"), [
    ("1", {}, "expected I/N"),
    ("a/2", {}, "not a whole number"),
    ("1/b", {}, "not a whole number"),
    ("0/0", {}, "at least 1"),
    ("2/2", {}, "between 0 and 1"),
    ("-1/2", {}, "between 0 and 1"),
    ("auto/4", {}, f"${INDEX_VARIABLE}, which is not set"),
    ("auto/4", {INDEX_VARIABLE: "4"}, "between 0 and 3"),
    ("auto/4", {INDEX_VARIABLE: "x"}, f"${INDEX_VARIABLE}='x'"),
])
def test_parse_shard_rejects_bad_values(text: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("$", r"\$")):
        parse_shard(text, environ=environ)


@pytest.mark.parametrize("value", ["3/3", "x/2", "auto/2"])
def test_predict_bad_shard_is_a_message_and_exit_2(
    value: str, tiny_checkpoint: Path, photo_folder: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(INDEX_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_predict(tiny_checkpoint, photo_folder, tmp_path, "--shard", value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --shard" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir()), "nothing is written for a bad --shard"


# ------------------------------------------------------------------------------------------------ assignment
def test_shard_of_is_sha1_of_the_name_so_every_machine_agrees() -> None:
    for name in ("Abyssinian_1", "beagle_10", "chat noir", "Ærø_7"):
        expected = int(hashlib.sha1(name.encode()).hexdigest()[:16], 16)
        for count in (1, 2, 3, 16):
            assert shard_of(name, count) == expected % count


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_cover_every_name_exactly_once_and_evenly(count: int) -> None:
    items = [(f"photo_{i:05d}", i) for i in range(2000)]
    shares = [take_shard(items, Shard(index, count)) for index in range(count)]
    taken = [name for share in shares for name, _ in share]
    assert sorted(taken) == sorted(name for name, _ in items)  # every name, none twice
    for share in shares:
        assert abs(len(share) - len(items) / count) < 0.1 * len(items) / count + 10
        assert [i for _, i in share] == sorted(i for _, i in share)  # original order kept


def test_adding_photos_does_not_move_the_others_between_shards() -> None:
    before = [(f"a_{i}", i) for i in range(200)]
    after = before + [(f"b_{i}", i) for i in range(50)]
    for index in range(3):
        old = {name for name, _ in take_shard(before, Shard(index, 3))}
        new = {name for name, _ in take_shard(after, Shard(index, 3))}
        assert old <= new and new - old <= {name for name, _ in after[200:]}


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def shard_outputs(
    tiny_checkpoint: Path, photo_folder: Path, tmp_path_factory: pytest.TempPathFactory,
) -> list[Path]:
    """The output folders of ``--shard 0/2`` and ``--shard 1/2`` over the photos. Read-only by convention."""
    outs = [tmp_path_factory.mktemp(f"shard{index}") for index in range(2)]
    for index, out in enumerate(outs):
        assert run_predict(tiny_checkpoint, photo_folder, out, "--shard", f"{index}/2") == 0
    return outs


def test_two_shards_predict_a_folder_exactly_once(shard_outputs: list[Path]) -> None:
    first, second = (masks_in(out) for out in shard_outputs)
    assert first and second, "both shards got photos"
    assert not first & second
    assert first | second == set(NAMES)
    for out in shard_outputs:
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}_mask.png" for n in masks_in(out))


def test_shard_auto_reads_the_index_from_the_environment(
    tiny_checkpoint: Path, photo_folder: Path, shard_outputs: list[Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(INDEX_VARIABLE, "1")
    assert run_predict(tiny_checkpoint, photo_folder, tmp_path, "--shard", "auto/2") == 0
    assert masks_in(tmp_path) == masks_in(shard_outputs[1])


def test_a_finished_run_has_nothing_to_do_and_loads_no_model(
    photo_folder: Path, shard_outputs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # The checkpoint does not exist: a run that tried to load it would fail with exit code 2.
    assert run_predict(tmp_path / "gone.pt", photo_folder, shard_outputs[0], "--shard", "0/2") == 0
    assert "nothing to do" in capsys.readouterr().out


def test_an_interrupted_run_resumes_and_skips_what_is_done(
    tiny_checkpoint: Path, photo_folder: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "masks"
    real_save = predict.save_png
    saved: list[Path] = []

    def save_then_die(array: np.ndarray, path: Path) -> None:
        if len(saved) == 3:
            raise KeyboardInterrupt  # the process is stopped in the middle of the fourth photo
        real_save(array, path)
        saved.append(path)

    monkeypatch.setattr(predict, "save_png", save_then_die)
    assert run_predict(tiny_checkpoint, photo_folder, out) == 130
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in saved), "no partial or temp files"
    done_before = {p.name: p.stat().st_mtime_ns for p in saved}

    monkeypatch.setattr(predict, "save_png", real_save)
    # A process killed outright (SIGKILL) can leave a temporary file: it does not count as an output.
    stale = out / f".{NAMES[-1]}_mask.png.abc123.tmp"
    stale.write_bytes(b"half a PNG")
    caplog.set_level("INFO", logger="training.predict")
    capsys.readouterr()
    assert run_predict(tiny_checkpoint, photo_folder, out) == 0
    assert "skipped 3 photo(s) whose outputs exist" in caplog.text
    assert "wrote 6 mask(s)" in capsys.readouterr().out
    assert masks_in(out) == set(NAMES)
    assert {name: (out / name).stat().st_mtime_ns for name in done_before} == done_before, "done work redone"
    for path in out.glob("*_mask.png"):
        with Image.open(path) as mask:
            mask.verify()


def copy_photos(photo_folder: Path, names: list[str], folder: Path) -> Path:
    folder.mkdir()
    for name in names:
        (folder / f"{name}.jpg").write_bytes((photo_folder / f"{name}.jpg").read_bytes())
    return folder


def test_overlay_runs_redo_photos_that_only_have_a_mask_and_overwrite_redoes_all(
    tiny_checkpoint: Path, photo_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    names = NAMES[:3]
    photos = copy_photos(photo_folder, names, tmp_path / "photos")
    out = tmp_path / "masks"
    out.mkdir()
    for name in names:  # what a run without --overlay leaves (empty stand-ins: only their names count)
        (out / f"{name}_mask.png").write_bytes(b"")
    (out / f"{names[0]}_overlay.png").write_bytes(b"")  # only this photo has both outputs
    caplog.set_level("INFO", logger="training.predict")
    assert run_predict(tiny_checkpoint, photos, out, "--overlay") == 0
    assert "skipped 1 photo(s)" in caplog.text
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    assert set(sizes) == {f"{n}_{kind}.png" for n in names for kind in ("mask", "overlay")}
    assert [sizes[f"{n}_mask.png"] > 0 for n in names] == [False, True, True]
    caplog.clear()
    assert run_predict(tiny_checkpoint, photos, out, "--overlay", "--overwrite") == 0
    assert "skipped" not in caplog.text
    assert all(p.stat().st_size > 0 for p in out.iterdir()), "--overwrite predicted the done photo again"


def test_skip_bad_goes_past_an_unreadable_photo(
    tiny_checkpoint: Path, photo_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    photos = copy_photos(photo_folder, NAMES[:2], tmp_path / "photos")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    assert run_predict(tiny_checkpoint, photos, tmp_path / "strict") == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert run_predict(tiny_checkpoint, photos, tmp_path / "lenient", "--skip-bad") == 0
    assert "1 unreadable photo(s) skipped" in capsys.readouterr().out
    assert masks_in(tmp_path / "lenient") == set(NAMES[:2])


def test_model_default_is_the_embedded_checkpoint(photo_folder: Path, tmp_path: Path) -> None:
    assert Path(predict.model_path("default")).is_file()
    assert predict.model_path("runs/x.pt") == "runs/x.pt"
    assert predict.main(["--model", "default", str(photo_folder / f"{NAMES[0]}.jpg"), "--out", str(tmp_path),
                         *CPU]) == 0
    with Image.open(tmp_path / f"{NAMES[0]}_mask.png") as mask:
        assert mask.size == (40, 32)
