"""HTTP load test of the real service on loopback: a mix of normal and hostile uploads, no 5xx allowed.

Run from the repository root; it starts ``python -m app`` on 127.0.0.1, stops by itself, and exits 1 when any
answer is a 5xx or not the status expected:

    python -m bench.loadtest                                   # 2000 requests or 120 s, 8 concurrent
    python -m bench.loadtest --requests 150 --duration 60      # a short check
    python -m bench.loadtest --checkpoint models/weights/default.pt --concurrency 16

By default the server gets a tiny random checkpoint (resnet34_unet at 64x64), so the test is about HTTP,
decoding, validation and encoding rather than the model. About 70% of requests are normal JPEG/PNG uploads of
assorted sizes (some with ground truth, some asking for overlays); about 30% are hostile, each with the 4xx it
must get: an empty file, text, a truncated JPEG, ground truth of the wrong size, a threshold out of range, a
missing field, a body over the upload limit, and a 20000x20000 1-bit PNG bomb. The server's resident memory is
read from /proc at start, after 10% of the run and at the end; growth over 50% from the 10% mark to the end is
flagged as a possible leak. A markdown table goes to stdout, everything to ``bench/results/loadtest-*.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import (
    Machine,
    Outcome,
    RequestSpec,
    Server,
    drive,
    encode_image,
    fmt,
    machine_info,
    make_checkpoint,
    markdown_table,
    percentile_ms,
    running_server,
    synthetic_photo,
    utc_now,
    write_json,
)

PNG = "image/png"
JPEG = "image/jpeg"
HOSTILE_SHARE = 0.3
LEAK_GROWTH = 0.5


# ------------------------------------------------------------------------------------------------ payloads
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` zeros: ~50 KB on the wire, 400 megapixels."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + \
        _png_chunk(b"IEND", b"")


def _mask_png(width: int, height: int) -> bytes:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    return encode_image(mask, "PNG")


def _upload(name: str, data: bytes, mime: str) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (name, data, mime)}


def normal_requests() -> list[RequestSpec]:
    """Assorted photos, formats and outputs: each must get a 200 with the body it asked for."""
    jpeg = {size: encode_image(synthetic_photo(*size, seed=i), "JPEG", 90)
            for i, size in enumerate([(320, 240), (500, 375), (1024, 768), (1920, 1080), (3000, 2000)])}
    png = {size: encode_image(synthetic_photo(*size, seed=10 + i), "PNG")
           for i, size in enumerate([(640, 480), (800, 600)])}
    accept_png = {"Accept": PNG}
    return [
        RequestSpec("jpeg 320x240 png", _upload("a.jpg", jpeg[(320, 240)], JPEG), headers=accept_png),
        RequestSpec("jpeg 500x375 json", _upload("b.jpg", jpeg[(500, 375)], JPEG)),
        RequestSpec("jpeg 500x375 + truth", {**_upload("c.jpg", jpeg[(500, 375)], JPEG),
                                             "ground_truth": ("c.png", _mask_png(500, 375), PNG)}),
        RequestSpec("jpeg 1024x768 overlay", _upload("d.jpg", jpeg[(1024, 768)], JPEG), {"output": "overlay"},
                    accept_png),
        RequestSpec("jpeg 1920x1080 probability", _upload("e.jpg", jpeg[(1920, 1080)], JPEG),
                    {"output": "probability", "threshold": "0.3"}),
        RequestSpec("jpeg 3000x2000 png", _upload("f.jpg", jpeg[(3000, 2000)], JPEG), headers=accept_png),
        RequestSpec("png 640x480 png", _upload("g.png", png[(640, 480)], PNG), headers=accept_png),
        RequestSpec("png 800x600 cutout", _upload("h.png", png[(800, 600)], PNG), {"output": "cutout"},
                    accept_png),
    ]


def hostile_requests(max_upload_bytes: int) -> list[RequestSpec]:
    """Bad input, each with the only acceptable answer."""
    photo = encode_image(synthetic_photo(400, 300, seed=99), "JPEG", 90)
    hostile = [
        ("empty file", _upload("e.jpg", b"", JPEG), None, (400,)),
        ("text file", _upload("t.txt", b"hello, this is not an image\n" * 20, "text/plain"), None, (415,)),
        ("truncated jpeg", _upload("t.jpg", photo[: len(photo) // 2], JPEG), None, (400,)),
        ("wrong-size truth", {**_upload("w.jpg", photo, JPEG),
                              "ground_truth": ("w.png", _mask_png(64, 48), PNG)}, None, (422,)),
        ("threshold 1.5", _upload("h.jpg", photo, JPEG), {"threshold": "1.5"}, (422,)),
        ("threshold not a number", _upload("n.jpg", photo, JPEG), {"threshold": "half"}, (422,)),
        ("missing image field", {"picture": ("p.jpg", photo, JPEG)}, None, (422,)),
        ("over-limit body", _upload("big.jpg", photo + b"\0" * (max_upload_bytes + 1024), JPEG), None,
         (413,)),
        ("20000x20000 png bomb", _upload("bomb.png", png_bomb(), PNG), None, (413,)),
    ]
    return [RequestSpec(kind, files, data, {"Accept": PNG}, expected, hostile=True)
            for kind, files, data, expected in hostile]


def schedule(normal: list[RequestSpec], hostile: list[RequestSpec], count: int,
             seed: int) -> list[RequestSpec]:
    """A reproducible mix, ~70% normal and ~30% hostile, with every kind placed once early in the run (within
    the first quarter) so that a run cut short by ``--duration`` still tries them all."""
    rng = random.Random(seed)
    plan = [rng.choice(hostile) if rng.random() < HOSTILE_SHARE else rng.choice(normal) for _ in range(count)]
    kinds = normal + hostile
    early = range(min(count, max(len(kinds), count // 4)))
    for position, spec in zip(rng.sample(early, min(len(early), len(kinds))), kinds, strict=False):
        plan[position] = spec
    return plan


# ------------------------------------------------------------------------------------------------ results
@dataclass
class KindStats:
    kind: str
    hostile: bool
    expected: list[int]
    sent: int
    statuses: dict[str, int]
    wrong: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class RssSamples:
    start_mb: float | None = None
    at_10pct_mb: float | None = None
    end_mb: float | None = None
    peak_mb: float | None = None

    @property
    def growth(self) -> float | None:
        if self.at_10pct_mb and self.end_mb is not None:
            return (self.end_mb - self.at_10pct_mb) / self.at_10pct_mb
        return None


@dataclass
class LoadReport:
    started_at: str
    machine: Machine
    settings: dict[str, object]
    requests: int = 0
    seconds: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)
    wrong: int = 0
    server_errors: int = 0
    normal_p50_ms: float | None = None
    normal_p99_ms: float | None = None
    rss: RssSamples = field(default_factory=RssSamples)
    rss_growth: float | None = None
    possible_leak: bool = False
    kinds: list[KindStats] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.requests > 0 and self.wrong == 0 and self.server_errors == 0


def kind_stats(plan: list[RequestSpec], outcomes: list[Outcome]) -> list[KindStats]:
    specs = {spec.kind: spec for spec in plan}
    stats = []
    for kind, spec in specs.items():
        mine = [o for o in outcomes if o.kind == kind]
        if not mine:
            continue
        ok = [o.latency_s for o in mine if o.correct]
        statuses = dict(sorted(Counter(str(o.status) for o in mine).items()))
        wrong = sum(not o.correct for o in mine)
        stats.append(KindStats(kind, spec.hostile, list(spec.expected), len(mine), statuses, wrong,
                               percentile_ms(ok, 50), percentile_ms(ok, 99)))
    return sorted(stats, key=lambda s: (s.hostile, s.kind))


def summarise(report: LoadReport, plan: list[RequestSpec], outcomes: list[Outcome], wall: float) -> None:
    report.requests, report.seconds = len(outcomes), round(wall, 1)
    report.by_status = dict(sorted(Counter(str(o.status) for o in outcomes).items()))
    report.wrong = sum(not o.correct for o in outcomes)
    report.server_errors = sum(o.status >= 500 for o in outcomes)
    normal = [o.latency_s for o in outcomes if not o.hostile and o.correct]
    report.normal_p50_ms, report.normal_p99_ms = percentile_ms(normal, 50), percentile_ms(normal, 99)
    report.kinds = kind_stats(plan, outcomes)
    report.wrong_examples = [f"{o.kind}: status {o.status}" + (f" ({o.error})" if o.error else "")
                             for o in outcomes if not o.correct][:10]
    report.rss_growth = report.rss.growth
    report.possible_leak = report.rss_growth is not None and report.rss_growth > LEAK_GROWTH


# ---------------------------------------------------------------------------------------------------- run
def _rss_sampler(server: Server, rss: RssSamples, mark: int, duration: float) -> Callable[[int], None]:
    """A callback for each finished request: reads VmRSS once, at 10% of the requests or of the duration."""
    started = time.perf_counter()

    def on_done(done: int) -> None:
        if rss.at_10pct_mb is None and (done >= mark or time.perf_counter() - started >= 0.1 * duration):
            rss.at_10pct_mb = server.rss_mb()

    return on_done


def run_load(server: Server, plan: list[RequestSpec], args: argparse.Namespace,
             rss: RssSamples) -> tuple[list[Outcome], float]:
    rss.start_mb = server.rss_mb()
    on_done = _rss_sampler(server, rss, max(1, len(plan) // 10), args.duration)
    outcomes, wall = asyncio.run(drive(server.url, lambda i: plan[i], concurrency=args.concurrency,
                                       max_requests=len(plan), max_seconds=args.duration, on_done=on_done))
    rss.end_mb, rss.peak_mb = server.rss_mb(), server.peak_rss_mb()
    return outcomes, wall


def _server_checkpoint(args: argparse.Namespace, tmp: Path) -> Path:
    if args.checkpoint:
        return args.checkpoint.resolve()
    path, _ = make_checkpoint(tmp, args.arch, args.image_size)
    return path


def run(args: argparse.Namespace) -> LoadReport:
    max_upload = int(args.max_upload_mb * 1024 * 1024)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = LoadReport(utc_now(), machine_info(), settings)
    print("building payloads...", file=sys.stderr)
    plan = schedule(normal_requests(), hostile_requests(max_upload), args.requests, args.seed)
    with tempfile.TemporaryDirectory(prefix="petseg-loadtest-") as tmp:
        checkpoint = _server_checkpoint(args, Path(tmp))
        env = {"PETSEG_MAX_UPLOAD_BYTES": str(max_upload), "PETSEG_LOG_LEVEL": "warning"}
        with running_server(checkpoint, Path(tmp), device=args.device, env=env) as server:
            print(f"server ready in {server.startup_s:.1f}s at {server.url}; sending up to {len(plan)} "
                  f"requests ({args.concurrency} concurrent, at most {args.duration:g}s)", file=sys.stderr)
            outcomes, wall = run_load(server, plan, args, report.rss)
    summarise(report, plan, outcomes, wall)
    return report


# ------------------------------------------------------------------------------------------------- output
def summary_table(report: LoadReport) -> str:
    rss = report.rss
    rate = report.requests / max(report.seconds, 1e-9)
    growth = fmt(report.rss_growth * 100 if report.rss_growth is not None else None, 1, "%")
    rows = [
        ["requests", f"{report.requests} in {report.seconds:g}s ({rate:.1f}/s)"],
        ["by status", ", ".join(f"{k}: {v}" for k, v in report.by_status.items())],
        ["wrong status or body", str(report.wrong)],
        ["5xx", str(report.server_errors)],
        ["normal latency p50 / p99", f"{fmt(report.normal_p50_ms)} / {fmt(report.normal_p99_ms)} ms"],
        ["server RSS start / 10% / end",
         f"{fmt(rss.start_mb, 0)} / {fmt(rss.at_10pct_mb, 0)} / {fmt(rss.end_mb, 0)} MB"],
        ["server peak RSS (VmHWM)", f"{fmt(rss.peak_mb, 0)} MB"],
        ["RSS growth 10% → end", growth + (" — possible leak" if report.possible_leak else "")],
        ["verdict", "PASS" if report.passed else "FAIL"],
    ]
    return markdown_table(["load test", ""], rows)


def kinds_table(report: LoadReport) -> str:
    rows = [[k.kind, "hostile" if k.hostile else "normal", "/".join(map(str, k.expected)), str(k.sent),
             ", ".join(f"{s}: {n}" for s, n in k.statuses.items()), str(k.wrong), fmt(k.p50_ms),
             fmt(k.p99_ms)] for k in report.kinds]
    headers = ["request", "type", "expected", "sent", "statuses", "wrong", "p50 ms", "p99 ms"]
    return markdown_table(headers, rows)


def render(report: LoadReport) -> str:
    wrong = "\n".join(f"- {line}" for line in report.wrong_examples)
    text = f"### Load test\n\n{summary_table(report)}\n\n### By request kind\n\n{kinds_table(report)}"
    return text + (f"\n\nwrong answers (first 10):\n{wrong}" if wrong else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="at most this many requests")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--duration", type=float, default=120.0, help="no new requests after this many seconds")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="serve this checkpoint instead of a tiny random one")
    p.add_argument("--arch", default="resnet34_unet", help="architecture of the tiny checkpoint")
    p.add_argument("--image-size", type=int, default=64, help="input size of the tiny checkpoint")
    p.add_argument("--device", default="cpu", help="PETSEG_DEVICE for the server (cpu, auto, cuda)")
    p.add_argument("--max-upload-mb", type=float, default=8.0,
                   help="PETSEG_MAX_UPLOAD_BYTES for the server, in MiB (the over-limit body exceeds it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default bench/results/loadtest-<time>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.duration <= 0:
        print("loadtest: --requests, --concurrency and --duration must be positive", file=sys.stderr)
        return 2
    report = run(args)
    print(render(report))
    path = write_json({**report.__dict__, "passed": report.passed}, args.out, "loadtest")
    print(f"\nresults written to {path}", file=sys.stderr)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
