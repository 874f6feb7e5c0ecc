"""Nonsense values are refused where they are parsed: one usage line, exit code 2, before any work."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.client import main as client_main
from training.cli import run_cli
from training.cv import main as cv_main
from training.evaluate import main as evaluate_main
from training.images import DatasetFileError
from training.predict import main as predict_main
from training.train import main as train_main

BAD_THRESHOLDS = ["2", "-1", "nan", "half"]


def refused(main: Callable[[list[str]], int | None], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("value", BAD_THRESHOLDS)
def test_evaluate_and_predict_refuse_a_threshold_outside_0_1(value: str, tiny_checkpoint: Path, pet_dataset: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--threshold", value]
    assert "--threshold" in refused(evaluate_main, [*common, "--out", str(tmp_path / "r.json")], capsys)
    assert "--threshold" in refused(predict_main, [*common, "--split", "valid", "--out", str(tmp_path / "p")],
                                    capsys)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "p").exists()


def test_a_threshold_of_0_or_1_is_accepted_by_the_parser() -> None:
    from training.evaluate import build_parser

    assert build_parser().parse_args(["--model", "m", "--threshold", "1"]).threshold == 1.0
    assert build_parser().parse_args(["--model", "m", "--threshold", "0"]).threshold == 0.0


@pytest.mark.parametrize("size", ["7", "31", "0", "-64"])
def test_train_refuses_an_input_the_network_cannot_take(size: str, pet_dataset: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(train_main, ["--data_path", str(pet_dataset), "--out", str(tmp_path / "run"), "--image-size", size],
                  capsys)
    assert "--image-size" in err and ">= 32" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("main", "argv"), [
    (evaluate_main, ["--model", "m", "--worst", "-3"]),
    (cv_main, ["--worst", "-3"]),
    (evaluate_main, ["--model", "m", "--limit", "0"]),
    (predict_main, ["--model", "m", "x.jpg", "--limit", "0"]),
    (client_main, ["segment", "x.jpg", "--timeout", "0"]),
    (client_main, ["segment", "x.jpg", "--timeout", "nan"]),
])
def test_counts_and_timeouts_must_be_positive(main: Callable[[list[str]], int | None], argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(main, argv, capsys)
    assert "error: argument" in err and "Traceback" not in err


def test_the_console_script_says_it_in_one_line_without_a_traceback(tiny_checkpoint: Path, pet_dataset: Path
                                                                    ) -> None:
    result = subprocess.run([sys.executable, "-m", "training.evaluate", "--model", str(tiny_checkpoint),
                             "--data_path", str(pet_dataset), "--threshold", "nan"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("expected a number between 0 and 1, not 'nan'")


def test_predict_and_export_refuse_an_out_they_cannot_write_before_any_work(
        tiny_checkpoint: Path, pet_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.export import main as export_main

    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    assert predict_main(["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "valid",
                         "--out", str(in_the_way)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert predict_main(["--model", str(tiny_checkpoint), "--data_path", str(pet_dataset), "--split", "valid",
                         "--out", str(in_the_way / "masks")]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    assert export_main(["--model", str(tiny_checkpoint), "--out", str(in_the_way / "m.pt")]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    assert export_main(["--model", str(tiny_checkpoint), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing half-made


def test_cv_refuses_an_out_it_cannot_write_before_the_first_fold_trains(
        pet_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    for out in (in_the_way, in_the_way / "cv"):
        assert cv_main(["--data_path", str(pet_dataset), "-n", "unet", "-e", "1", "--folds", "2",
                        "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and "fold 1/2" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


class _UnreadableAt:
    """A dataset whose third photo cannot be read, as ``load_sample`` says it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        if index == 2:
            raise DatasetFileError("cannot read photo images/Bad_2.jpg: cannot identify image file")
        return index


@pytest.fixture
def sigchld_restored() -> Iterator[None]:
    """A DataLoader with workers installs a SIGCHLD handler for the whole process and never removes it. Left in
    the test process, it went with a kernel-sent SIGSEGV that killed the suite later, while a test waited on a
    child process (on an AVX-512 machine; most likely the handler's signal frame did not fit the alternate
    signal stack). The handler is put back as it was."""
    previous = signal.getsignal(signal.SIGCHLD)
    yield
    signal.signal(signal.SIGCHLD, previous)


@pytest.mark.usefixtures("sigchld_restored")
def test_an_error_in_a_dataloader_worker_is_one_line_not_the_workers_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    import torch.utils.data

    def load_everything() -> int:
        # Spawned, not forked: earlier tests in this process start OpenVINO and ONNX Runtime threads, and a
        # fork taken while a foreign thread holds a lock can crash the child.
        loader = torch.utils.data.DataLoader(_UnreadableAt(), batch_size=1, num_workers=2,
                                             multiprocessing_context="spawn")
        for _ in loader:
            pass
        return 0

    assert run_cli(load_everything) == 2
    assert capsys.readouterr().err == "error: cannot read photo images/Bad_2.jpg: cannot identify image file\n"
