"""What every command-line entry point shares: logging, the report's flags, and errors as exit code 2."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from models.checkpoint import CheckpointError
from models.engine.segmenter import SegmenterBase
from models.engine.selection import ENGINE_PRECISIONS, RUNTIMES, open_segmenter
from models.imaging.blobs import DEFAULT_MIN_BLOB_RATIO
from models.nets.registry import UnknownArchitectureError
from training.download import DownloadError
from training.images import DatasetFileError

__all__ = ["EMBEDDED_MODEL", "add_common_flags", "add_inference_flags", "at_least", "check_can_write", "compile_mode_for",
           "model_path", "open_engine", "run_cli", "setup_logging", "unit_interval"]

EMBEDDED_MODEL = "default"  # what --model default names: the checkpoint installed with the models package
# Below this many images a cold compilation (seconds to minutes) costs more than it saves (~15 ms an image).
COMPILE_MIN_IMAGES = 100

USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError, UnknownArchitectureError, DatasetFileError, DownloadError, FileNotFoundError, ValueError,
)


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) on a single process or torchrun's rank 0; the other ranks would repeat
    rank 0's lines, so they log warnings and errors only, tagged with their rank."""
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.DEBUG if verbose else logging.INFO
    tag = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""
    logging.basicConfig(level=level if rank == 0 else max(level, logging.WARNING),
                        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s", datefmt="%H:%M:%S")


class at_least:  # noqa: N801 - used as argparse's type=at_least(1), like a function
    """An argparse type: an integer >= ``minimum``. A class rather than a closure so that the command-line
    reference (training.cli_reference) can name the bound, and argparse's error says "invalid integer value"."""

    __name__ = "integer"

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    @property
    def value_name(self) -> str:
        return f"integer >= {self.minimum}"

    def __call__(self, text: str) -> int:
        value = int(text)
        if value < self.minimum:
            raise argparse.ArgumentTypeError(f"must be >= {self.minimum}, got {value}")
        return value


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train, evaluate and predict (the report's spellings plus kebab-case twins)."""
    parser.add_argument("--data_path", "--data-path", dest="data_path", default="dataset/oxford-iiit-pet",
                        help="dataset root in the official Oxford-IIIT Pet layout")
    parser.add_argument("--batch_size", "--batch-size", "-b", dest="batch_size", type=at_least(1), default=8,
                        help="images per batch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=at_least(0), default=2, help="DataLoader worker processes")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower() or default


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """Engine flags shared by evaluate and predict; ``--runtime``, ``--precision`` and ``--compile`` default to
    ``$PETSEG_RUNTIME``, ``$PETSEG_PRECISION`` and ``$PETSEG_COMPILE``, else auto, as the service reads them."""
    parser.add_argument("--runtime", choices=RUNTIMES, default=_env("PETSEG_RUNTIME", "auto"),
                        help="torch, or the ONNX export on onnxruntime or openvino; auto = the measured rule "
                             "(models.engine.selection.auto_engine)")
    parser.add_argument("--precision", choices=ENGINE_PRECISIONS, default=_env("PETSEG_PRECISION", "auto"),
                        help="int8 runs on onnxruntime/openvino, calibrated on --calibration photos")
    parser.add_argument("--calibration", default=None,
                        help="int8: an Oxford-IIIT Pet root (its train split) or a folder of training photos "
                             "(default $PETSEG_CALIBRATION_DATA, else dataset/oxford-iiit-pet)")
    parser.add_argument("--compile", choices=("auto", "on", "off"),
                        default=_env("PETSEG_COMPILE", "auto"),
                        help=f"torch.compile the model; auto = on the CPU for runs of {COMPILE_MIN_IMAGES}+ images")
    parser.add_argument("--min-blob-ratio", type=unit_interval,
                        default=os.environ.get("PETSEG_MIN_BLOB_RATIO", "").strip() or str(DEFAULT_MIN_BLOB_RATIO),
                        help="drop detached regions of the mask smaller than this share of the largest one, as the "
                             f"service does (default $PETSEG_MIN_BLOB_RATIO, else {DEFAULT_MIN_BLOB_RATIO}; 0 keeps "
                             "every region)")


def unit_interval(text: str | float) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, not {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, not {text!r}")
    return value


def open_engine(args: argparse.Namespace, model: str | os.PathLike[str], images: int) -> SegmenterBase:
    """The engine the inference flags ask for (``add_inference_flags``), for a run of ``images`` images; its
    ``predict`` drops small blobs at ``--threshold`` as the service does."""
    segmenter = open_segmenter(model, runtime=args.runtime, device=args.device, precision=args.precision,
                               compile=compile_mode_for(args.compile, images), allow_untrained=True,
                               calibration=args.calibration)
    segmenter.min_blob_ratio = args.min_blob_ratio
    segmenter.blob_threshold = getattr(args, "threshold", 0.5)
    return segmenter


def compile_mode_for(requested: str, images: int) -> str:
    """``auto`` only compiles when the run is long enough to earn the compilation back."""
    if requested == "auto" and images < COMPILE_MIN_IMAGES:
        return "off"
    return requested


def check_can_write(path: str | os.PathLike[str], *, folder: bool) -> Path:
    """``ValueError`` naming the problem when ``path`` (a folder to write into, or a file to create) cannot be
    written: a file or folder in the way, a file where a parent folder should be, no write permission. Creates
    nothing: a refused run leaves no empty folder behind."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise ValueError(f"--out {path} is a folder: give a file path")
    start = path if folder else path.parent
    existing = next((p for p in [start, *start.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise ValueError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {existing} is not writable")
    return path


def model_path(model: str) -> str:
    """``default`` is the checkpoint installed with the ``models`` package; anything else is a path."""
    if model == EMBEDDED_MODEL and not Path(model).exists():
        return str(resources.files("models") / "weights" / "default.pt")
    return model


def user_message(exc: BaseException) -> str:
    """The error's own message. An error raised in a DataLoader worker comes back to the main process as the
    same type whose message is the worker's whole traceback ("Caught X in DataLoader worker process N. Original
    Traceback ..."): keep only what the error said, its last line less the type's name."""
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    name, colon, message = last.partition(": ")
    return message if colon and name.rsplit(".", 1)[-1] == type(exc).__name__ else last


def run_cli(main: Callable[[], int | None]) -> int:
    """Run ``main``; turn user errors into one clear line on stderr and exit code 2, Ctrl-C into 130."""
    try:
        return int(main() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
