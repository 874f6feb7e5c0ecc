"""Speed benchmark: the report's plain PyTorch baseline vs petseg's inference engine, service and training.

Run from the repository root (CUDA is used when present; ``--device cpu`` forces the CPU):

    python -m bench.run                       # both models at 256x256, ~10 minutes on a 2-core CPU
    python -m bench.run --quick               # resnet34_unet only, 128x128, few iterations, ~1-2 minutes
    python -m bench.run --models unet --size 256 --markdown --out bench/results/unet.json
    python -m bench.run --sections engine service    # a subset of: baseline engine runtimes service train

Per model, with random weights (speed does not depend on them):

1. baseline: fp32, eager, NCHW, batch 1, ``torch.no_grad()``, as the lab report runs it;
2. engine: ``models.engine.segmenter.Segmenter.forward`` (bf16 autocast where the hardware computes bf16,
   channels_last, ``inference_mode``) at batch 1 and a larger batch; FLOPs of one forward
   (``FlopCounterMode``) turn images/s into GFLOP/s, compared with the matrix-product rate measured in the
   same run;
3. service: ``python -m app`` on a loopback port, ``POST /segment`` (``Accept: image/png``) with synthetic
   500x375 and 4000x3000 JPEGs at several concurrencies: images/s, latency percentiles, errors, server peak
   RSS;
4. training: the report's plain loop (fp32, NCHW, sigmoid + ``nn.BCELoss`` + Dice) vs the project's
   ``training.loop.train_one_epoch`` (bf16 where native, channels_last, BCE-with-logits + Dice, clipping).
5. runtimes: the model exported to ONNX (``models.engine.exported``) on ONNX Runtime and OpenVINO, fp32 and int8 (static
   QDQ calibrated on synthetic photos: the weights are random, so only the speed means something here; accuracy
   is gated by tests/models/test_int8.py), batch 1 on all cores, each built and timed on a fresh thread of a
   fresh process; the service's runtime (``PETSEG_RUNTIME=auto``) is read from its ``/model``.

The client shares the machine with the server: on a small CPU it takes cycles from it, as a co-located proxy
would.
Results: a markdown table per section on stdout, everything in ``bench/results/run-<UTC time>.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import machine_info, utc_now, write_json
from bench.model_speed import bench_baseline, bench_engine, count_gflop, matmul_rate
from bench.results import DEFAULT, QUICK, QUICK_SIZE, SECTIONS, BenchReport, Budget, MatmulRate, ModelReport
from bench.runtimes import bench_runtimes
from bench.service_speed import bench_service, make_photos
from bench.tables import compute_ratios, readme_table, render, runtime_table
from bench.timing import step
from bench.training_speed import bench_train_plain, bench_train_project
from models import build_model
from models.checkpoint import Checkpoint
from models.engine.runtime import keep_freed_memory, resolve_device, resolve_precision
from models.nets.registry import canonical_arch_name


def bench_model(arch: str, size: int, device: torch.device, sections: set[str], budget: Budget,
                photos: dict[str, bytes] | None) -> ModelReport:
    print(f"{arch} at {size}x{size} on {device}", file=sys.stderr)
    report = ModelReport(arch, size, gflop_per_image=step("FLOPs", lambda: count_gflop(arch, size)))
    if sections & {"baseline", "engine", "runtimes"}:
        _bench_model_only(report, device, sections, budget)
    if "train" in sections:
        report.train_plain = step("train, plain", lambda: bench_train_plain(arch, size, device, budget))
        report.train_project = step("train, project",
                                     lambda: bench_train_project(arch, size, device, budget))
    if "service" in sections and photos:
        report.service = step("service", lambda: bench_service(arch, size, device, photos, budget))
    return report


def _bench_model_only(report: ModelReport, device: torch.device, sections: set[str], budget: Budget) -> None:
    """Baseline, engine and the exported runtimes share one set of random weights, as a checkpoint would deliver
    them."""
    torch.manual_seed(0)
    weights = build_model(report.arch).state_dict()
    checkpoint = Checkpoint(report.arch, weights, image_size=report.size, epoch=1)
    if "baseline" in sections:
        report.baseline = step("baseline", lambda: bench_baseline(checkpoint, device, budget))
    if "engine" in sections:
        report.engine = step("engine", lambda: bench_engine(checkpoint, device, budget))
    if "runtimes" in sections:
        report.runtimes = bench_runtimes(checkpoint, device, budget)


def measure_matmul(device: torch.device, budget: Budget) -> list[MatmulRate]:
    engine_dtype = resolve_precision("auto", device)
    wanted = ["fp32", engine_dtype] + (["bf16"] if device.type == "cuda" else [])
    return [step(f"matmul {d}", lambda d=d: matmul_rate(device, d, budget)) for d in dict.fromkeys(wanted)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"resnet34_unet only, {QUICK_SIZE}x{QUICK_SIZE}, few iterations: checks it all works")
    p.add_argument("--models", nargs="+", default=None, help="architectures (default: unet resnet34_unet)")
    p.add_argument("--size", type=int, default=None,
                   help=f"input size (default 256; {QUICK_SIZE} with --quick)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--engine-batch", type=int, default=None,
                   help="second engine batch size (default 8 on a GPU, 4 on a CPU, 2 with --quick)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default bench/results/run-<time>.json)")
    p.add_argument("--markdown", action="store_true", help="also print a README-ready summary table")
    p.add_argument("--service-env", nargs="+", default=[], metavar="NAME=VALUE", type=_service_setting,
                   help="service settings (e.g. PETSEG_RUNTIME=openvino PETSEG_PRECISION=int8); default: none, the "
                        "service as shipped")
    return p


def _budget(args: argparse.Namespace, device: torch.device) -> Budget:
    budget = QUICK if args.quick else DEFAULT
    budget = replace(budget, service_env=tuple(args.service_env))
    if args.engine_batch:
        return replace(budget, engine_batch=args.engine_batch)
    if device.type == "cuda" and not args.quick:
        return replace(budget, engine_batch=8)
    return budget


def _service_setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("PETSEG_"):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a PETSEG_* name, not {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        device = resolve_device(args.device)
        models = [canonical_arch_name(m) for m in args.models or
                  (["resnet34_unet"] if args.quick else ["unet", "resnet34_unet"])]
    except ValueError as exc:  # UnknownArchitectureError is a ValueError
        parser.error(str(exc))
    budget = _budget(args, device)
    keep_freed_memory()  # as the engine sets it, before the baseline too: every path runs under the same malloc
    size = args.size or (QUICK_SIZE if args.quick else 256)
    report = BenchReport(utc_now(), machine_info(), str(device),
                         {"quick": args.quick, "size": size, "sections": args.sections, "budget": budget})
    print(f"benchmark on {device}: {', '.join(models)} at {size}x{size}", file=sys.stderr)
    if {"baseline", "engine", "runtimes"} & set(args.sections):
        report.matmul = measure_matmul(device, budget)
    photos = step("synthetic JPEGs", make_photos) if "service" in args.sections else None
    for arch in models:
        model_report = bench_model(arch, size, device, set(args.sections), budget, photos)
        model_report.ratios = compute_ratios(model_report, report.matmul)
        report.models.append(model_report)
    report.seconds = round(time.perf_counter() - started, 1)
    report.load_average_end = [round(x, 2) for x in os.getloadavg()]
    print(render(report))
    if report.machine.load_average[0] > 0.5 * report.machine.usable_cores:
        print(f"\nnote: the machine was busy (load average {report.machine.load_average[0]} on "
              f"{report.machine.usable_cores} cores): these numbers are contended.")
    if args.markdown:
        print(f"\n### README summary\n\n{readme_table(report)}")
        print(f"\n### README runtimes\n\n{runtime_table(report)}")
    path = write_json(report, args.out, "run")
    print(f"\n{report.seconds:.0f}s; results written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
