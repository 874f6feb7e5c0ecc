"""Teacher labels for a folder of photos: one 8-bit probability PNG per photo, and a record of the teacher.

    petseg-pseudolabel photos/ --checkpoint models/weights/default.pt --flip --out labels/
    petseg-pseudolabel photos/ --onnx isnet.onnx --out labels/ --shard 0/2 --threads 1
    petseg-pseudolabel photos/ --onnx isnet.onnx --checkpoint default --combine veto --out labels/

``OUT/NAME.png`` holds round(255 x p), p the teacher's pet probability at the photo's size; ``OUT/teacher.json``
says which teacher made them (files with their sha256, adapter, combination rule). The run is resumable: photos
whose PNG exists are skipped, so a killed run loses at most the photo it was on; a folder made by another teacher
is refused (``--overwrite`` relabels it). Photos are visited in a fixed pseudo-random order (by a hash of the name),
so a run stopped early leaves a sample spread over every breed, not the first ones alphabetically. An unreadable
photo is named in the log and in ``OUT/unreadable.txt`` and skipped: it never ends a long run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.atomic_files import write_atomically
from models.imaging.pngwrite import encode_png
from training.cli import at_least, check_can_write, model_path, run_cli, setup_logging, unit_interval
from training.images import DatasetFileError, read_rgb
from training.predict import collect_inputs, existing_files
from training.shards import parse_shard, take_shard
from training.teachers import (
    OUTPUT_KINDS,
    CheckpointTeacher,
    OnnxAdapter,
    OnnxSaliencyTeacher,
    Teacher,
    VetoedTeacher,
)

__all__ = ["RECORD_NAME", "build_parser", "build_teacher", "label_order", "main", "to_png_levels"]

log = logging.getLogger("training.pseudolabel")
RECORD_NAME = "teacher.json"
UNREADABLE_NAME = "unreadable.txt"
COMBINE_RULES = ("veto", "mean")


def parse_triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers, e.g. 0.5,0.5,0.5, not {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers (R,G,B), got {len(values)} in {text!r}")
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petseg-pseudolabel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the label PNGs and teacher.json")
    teachers = p.add_argument_group("teachers (at least one)")
    teachers.add_argument("--checkpoint", action="append", default=[], metavar="CKPT",
                          help="a petseg checkpoint ('default' = the embedded model); repeat for an ensemble "
                               "(the mean of their maps)")
    teachers.add_argument("--flip", action="store_true", help="checkpoints: average in the mirrored photo's map")
    teachers.add_argument("--onnx", default=None, metavar="MODEL.onnx",
                          help="a salient-object ONNX model (e.g. ISNet): a training-time tool, never served")
    teachers.add_argument("--teacher-size", type=at_least(1), default=None,
                          help="ONNX: the square side photos are resized to (default: the model's own)")
    teachers.add_argument("--teacher-mean", type=parse_triple, default=(0.5, 0.5, 0.5),
                          help="ONNX: per-channel mean on the 0-1 scale (default 0.5,0.5,0.5, ISNet's)")
    teachers.add_argument("--teacher-std", type=parse_triple, default=(1.0, 1.0, 1.0),
                          help="ONNX: per-channel std on the 0-1 scale (default 1,1,1, ISNet's)")
    teachers.add_argument("--teacher-output", choices=OUTPUT_KINDS, default="probability",
                          help="ONNX: what the output holds (ISNet: probability)")
    teachers.add_argument("--teacher-output-name", default=None, help="ONNX: the output to read (default: first)")
    teachers.add_argument("--teacher-runtime", choices=("auto", "openvino", "onnxruntime"), default="auto",
                          help="ONNX: auto = OpenVINO when installed and the side is the model's own")
    teachers.add_argument("--combine", choices=COMBINE_RULES, default="veto",
                          help="with --onnx and --checkpoint: veto = the ONNX outline minus regions the "
                               "checkpoints do not believe are a pet; mean = the mean of the two maps")
    teachers.add_argument("--veto-below", type=unit_interval, default=0.2,
                          help="veto: drop an outline region whose mean checkpoint probability is under this")
    p.add_argument("--threads", type=at_least(1), default=None, help="CPU threads for the teacher (default: all)")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="label share I of N of the photos (by a hash of each name): N processes label each once")
    p.add_argument("--limit", type=at_least(1), default=None,
                   help="label at most N photos (in the run's spread-out order, before sharding)")
    p.add_argument("--overwrite", action="store_true",
                   help="label every photo again, also in a folder another teacher made")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def label_order(names: list[str]) -> list[str]:
    """A fixed order that spreads every breed over the run (sorted names would label breed after breed)."""
    return sorted(names, key=lambda n: hashlib.sha1(n.encode("utf-8"), usedforsecurity=False).digest())


def to_png_levels(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 0..255 (nearest level)."""
    return np.clip(np.rint(np.asarray(prob, np.float32) * 255.0), 0, 255).astype(np.uint8)


def build_teacher(args: argparse.Namespace) -> Teacher:
    if not args.checkpoint and not args.onnx:
        raise ValueError("no teacher: give --checkpoint CKPT (repeatable), --onnx MODEL.onnx, or both")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    judge = CheckpointTeacher([model_path(c) for c in args.checkpoint], flip=args.flip) if args.checkpoint else None
    if not args.onnx:
        assert judge is not None
        return judge
    adapter = OnnxAdapter(size=args.teacher_size, mean=args.teacher_mean, std=args.teacher_std,
                          output=args.teacher_output, output_name=args.teacher_output_name)
    outline = OnnxSaliencyTeacher(args.onnx, adapter, runtime=args.teacher_runtime, threads=args.threads)
    if judge is None:
        return outline
    if args.combine == "veto":
        return VetoedTeacher(outline, judge, args.veto_below)
    return MeanTeacher([outline, judge])


class MeanTeacher:
    """The plain mean of several teachers' maps."""

    def __init__(self, teachers: list[Teacher]) -> None:
        self.teachers = teachers

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        return np.mean([t.probabilities(image) for t in self.teachers], axis=0).astype(np.float32)

    def record(self) -> dict[str, Any]:
        return {"kind": "mean", "teachers": [t.record() for t in self.teachers]}


def _check_record(out: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix two teachers' labels in one folder."""
    path = out / RECORD_NAME
    if not path.exists() or overwrite:
        return
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}): move it away or pass --overwrite") from None
    if existing.get("teacher") != record:
        raise ValueError(f"{out} holds labels of another teacher (see {path}); pick another --out or pass "
                         "--overwrite to relabel every photo")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def run() -> int:
        photos = {p.stem: p for p in collect_inputs(args.inputs)}
        names = label_order(list(photos))[: args.limit]
        if args.shard:
            total = len(names)
            names = [n for n, _ in take_shard([(n, None) for n in names], args.shard)]
            log.info("shard %s: %d of %d photo(s)", args.shard, len(names), total)
        out = check_can_write(args.out, folder=True)
        teacher = build_teacher(args)
        record = json.loads(json.dumps(teacher.record()))  # as the file holds it: lists, not tuples
        _check_record(out, record, args.overwrite)
        out.mkdir(parents=True, exist_ok=True)  # only once the teacher has loaded: a refused run leaves nothing
        write_atomically(out / RECORD_NAME, lambda h: h.write(json.dumps(
            {"teacher": record, "format": "8-bit PNG, value = round(255 x pet probability), photo's size"},
            indent=1).encode()))
        done = set() if args.overwrite else existing_files(out)
        todo = [n for n in names if f"{n}.png" not in done]
        if len(todo) < len(names):
            log.info("skipped %d photo(s) already labelled in %s", len(names) - len(todo), out)
        unreadable: list[str] = []
        started = time.perf_counter()
        for name in tqdm(todo, desc="label", unit="img", disable=not sys.stderr.isatty()):
            try:
                image = read_rgb(photos[name])
            except DatasetFileError as exc:
                log.warning("skipping an unreadable photo: %s", exc)
                unreadable.append(str(photos[name]))
                continue
            levels = to_png_levels(teacher.probabilities(image))
            data = encode_png(levels)
            write_atomically(out / f"{name}.png", lambda h, data=data: h.write(data))
        if unreadable:
            with open(out / UNREADABLE_NAME, "a", encoding="utf-8") as handle:
                handle.writelines(f"{path}\n" for path in unreadable)
        labelled = len(todo) - len(unreadable)
        seconds = time.perf_counter() - started
        rate = f", {seconds / labelled:.2f} s a photo" if labelled else ""
        print(f"labelled {labelled} photo(s) in {out}{rate}" +
              (f"; {len(unreadable)} unreadable, listed in {out / UNREADABLE_NAME}" if unreadable else ""))
        return 0

    return run_cli(main=run)


if __name__ == "__main__":
    sys.exit(main())
