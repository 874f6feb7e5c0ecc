"""Ratios against the baseline measured in the same run, and the markdown tables printed from a report."""
from __future__ import annotations

from bench.common import fmt, markdown_table
from bench.results import (
    EXPORTED_PATHS,
    SMALL_PHOTO,
    BenchReport,
    MatmulRate,
    ModelReport,
    ServiceCell,
    Timing,
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cell(report: ModelReport, image: str, concurrency: int, *, default_batch: bool = True) -> ServiceCell | None:
    """The service cell for a photo and concurrency, with the default micro-batching or the other setting."""
    cells = report.service.cells if report.service else []
    matching = [c for c in cells if c.image == image and c.concurrency == concurrency]
    if not matching:
        return None
    default = matching[0].max_batch  # the default-settings cells come first
    return next((c for c in matching if (c.max_batch == default) == default_batch), None)


def compute_ratios(report: ModelReport, matmul: list[MatmulRate]) -> dict[str, float | None]:
    rates = {m.dtype: m.tflops * 1000.0 for m in matmul}  # GFLOP/s
    main = [t for t in report.engine if t.thread == "main"]
    engine1 = next((t for t in main if t.batch == 1), None)
    worker1 = next((t for t in report.engine if t.thread == "worker"), None)
    lanes1 = next((t for t in report.engine if t.thread.endswith("lanes")), None)
    # What the service is held to: the engine's fastest way to run single images, lanes included.
    serving = max((t for t in report.engine if t.batch == 1), key=lambda t: t.images_per_s, default=None)
    best = max(report.engine, key=lambda t: t.images_per_s) if report.engine else None
    gflop = report.gflop_per_image
    small4, small1 = _cell(report, "500x375", 4), _cell(report, "500x375", 1)
    large1 = _cell(report, "4000x3000", 1)
    other4 = _cell(report, "500x375", 4, default_batch=False)
    base = report.baseline
    return {
        "engine_b1_vs_baseline": _ratio(engine1 and engine1.images_per_s, base and base.images_per_s),
        "engine_best_vs_baseline": _ratio(best and best.images_per_s, base and base.images_per_s),
        "engine_worker_thread_vs_main_b1": _ratio(worker1 and worker1.images_per_s,
                                                  engine1 and engine1.images_per_s),
        "engine_gflops": best.images_per_s * gflop if best and gflop else None,
        "engine_fraction_of_matmul": _ratio(best.images_per_s * gflop if best and gflop else None,
                                            rates.get(best.precision) if best else None),
        "baseline_fraction_of_fp32_matmul": _ratio(base.images_per_s * gflop if base and gflop else None,
                                                   rates.get("fp32")),
        "engine_lanes_vs_b1": _ratio(lanes1 and lanes1.images_per_s, worker1 and worker1.images_per_s),
        "service_c4_500x375_vs_engine_b1": _ratio(small4 and small4.images_per_s,
                                                  serving and serving.images_per_s),
        "p50_4000x3000_vs_500x375_c1": _ratio(large1 and large1.p50_ms, small1 and small1.p50_ms),
        "service_c4_other_batching_vs_default": _ratio(other4 and other4.images_per_s,
                                                       small4 and small4.images_per_s),
        "train_project_vs_plain": _ratio(report.train_project and report.train_project.images_per_s,
                                         report.train_plain and report.train_plain.images_per_s),
        **_runtime_ratios(report, worker1, small4),
    }


def _exported(report: ModelReport, runtime: str, precision: str) -> Timing | None:
    return next((t for t in report.runtimes if (t.runtime, t.precision) == (runtime, precision)), None)


def _runtime_ratios(report: ModelReport, engine_worker: Timing | None, small4: ServiceCell | None
                    ) -> dict[str, float | None]:
    """The exported runtimes against ONNX Runtime fp32 at batch 1, the reference a user would pick instead."""
    ort32 = _exported(report, "onnxruntime", "fp32")
    reference = ort32 and ort32.images_per_s
    int8 = [t for t in report.runtimes if t.precision == "int8"]
    best_int8 = max(int8, key=lambda t: t.images_per_s) if int8 else None
    return {
        "onnxruntime_fp32_vs_baseline": _ratio(reference, report.baseline and report.baseline.images_per_s),
        # Both built and run on a fresh thread of a fresh process, batch 1, all cores.
        "engine_b1_worker_vs_onnxruntime_fp32": _ratio(engine_worker and engine_worker.images_per_s, reference),
        "openvino_fp32_vs_onnxruntime_fp32": _ratio(
            (t := _exported(report, "openvino", "fp32")) and t.images_per_s, reference),
        "best_int8_vs_onnxruntime_fp32": _ratio(best_int8 and best_int8.images_per_s, reference),
        "service_c4_500x375_vs_onnxruntime_fp32_b1": _ratio(small4 and small4.images_per_s, reference),
    }


# ------------------------------------------------------------------------------------------------ tables
def _pct(value: float | None) -> str:
    return fmt(value * 100 if value is not None else None, 1, "%")


def _x(value: float | None) -> str:
    return fmt(value, 2, "x")


def machine_table(report: BenchReport) -> str:
    m = report.machine
    rows = [["CPU", m.cpu], ["CPU flags", ", ".join(m.cpu_flags) or "–"],
            ["cores (usable / logical)", f"{m.usable_cores} / {m.logical_cores}"],
            ["memory", f"{m.memory_gb} GB"],
            ["GPU", m.gpu or "none"], ["torch (threads)", f"{m.torch} ({m.torch_threads})"],
            ["device used", report.device],
            ["load average (1/5/15 min) at start", " ".join(map(str, m.load_average))],
            ["load average at end", " ".join(map(str, report.load_average_end)) or "–"]]
    return markdown_table(["machine", ""], rows)


def matmul_table(report: BenchReport) -> str:
    rows = [[m.dtype, f"{m.n}x{m.n}", fmt(m.tflops, 2)] for m in report.matmul]
    return markdown_table(["matmul dtype", "size", "TFLOP/s"], rows)


def model_table(report: BenchReport) -> str:
    rates = {m.dtype: m.tflops * 1000.0 for m in report.matmul}
    rows = []
    for r in report.models:
        for name, t in [("baseline", r.baseline)] + [("engine", t) for t in r.engine] + \
                [(t.runtime, t) for t in r.runtimes]:
            if t is None:
                continue
            gflops = t.images_per_s * r.gflop_per_image if r.gflop_per_image else None
            where = {"main": "", "worker": " (worker thread)"}.get(t.thread, f" ({t.thread})")
            where += ", compiled" if t.compiled else ""
            rows.append([r.arch, name + where, str(t.batch), t.precision, fmt(t.images_per_s, 2),
                         fmt(t.median_ms, 1), fmt(gflops, 1), _pct(_ratio(gflops, rates.get(t.precision))),
                         fmt(t.cores_used, 2)])
    headers = ["model", "path", "batch", "precision", "img/s", "ms/batch", "GFLOP/s", "of matmul peak",
               "cores used"]
    return markdown_table(headers, rows)


def service_table(report: BenchReport) -> str:
    rows = []
    for r in report.models:
        for c in r.service.cells if r.service else []:
            rows.append([r.arch, f"{c.image} ({c.jpeg_kb:.0f} KB)", str(c.max_batch), str(c.concurrency),
                         str(c.requests), fmt(c.server_cpu_ms, 1), fmt(c.client_cpu_ms, 1),
                         str(c.errors), fmt(c.images_per_s, 2), fmt(c.p50_ms), fmt(c.p95_ms), fmt(c.p99_ms),
                         fmt(c.peak_rss_mb, 0)])
    headers = ["model", "JPEG", "max batch", "concurrency", "requests", "server CPU ms/req", "client CPU ms/req",
               "errors", "img/s", "p50 ms", "p95 ms", "p99 ms", "server peak RSS MB"]
    return markdown_table(headers, rows)


def train_table(report: BenchReport) -> str:
    rows = []
    for r in report.models:
        for name, t in (("report's plain loop", r.train_plain), ("train_one_epoch", r.train_project)):
            if t is not None:
                rows.append([r.arch, name, t.precision, str(t.batch), fmt(t.images_per_s, 2),
                             fmt(t.median_ms, 0), fmt(t.cores_used, 2)])
    return markdown_table(["model", "loop", "precision", "batch", "img/s", "ms/step", "cores used"], rows)


def ratio_table(report: BenchReport) -> str:
    rows = [[r.arch, fmt(r.gflop_per_image, 1), _x(r.ratios.get("engine_b1_vs_baseline")),
             _x(r.ratios.get("engine_best_vs_baseline")), _pct(r.ratios.get("engine_fraction_of_matmul")),
             _pct(r.ratios.get("service_c4_500x375_vs_engine_b1")),
             _x(r.ratios.get("p50_4000x3000_vs_500x375_c1")), _x(r.ratios.get("train_project_vs_plain")),
             _x(r.ratios.get("engine_worker_thread_vs_main_b1")), _x(r.ratios.get("engine_lanes_vs_b1")),
             _x(r.ratios.get("service_c4_other_batching_vs_default"))]
            for r in report.models]
    headers = ["model", "GFLOP/img", "engine b1 / baseline", "engine best / baseline",
               "engine of matmul peak", "service c4 500x375 / fastest engine b1", "p50 4000x3000 / 500x375 (c1)",
               "train project / plain", "engine b1 worker / main thread", "engine b1 lanes / worker thread",
               "service c4: other micro-batching / default"]
    return markdown_table(headers, rows)


def runtime_table(report: BenchReport) -> str:
    """The exported runtimes beside the PyTorch engine and the service, per model: images/s at batch 1 on all
    cores, and the ratios against ONNX Runtime fp32 (the issue's reference)."""
    rows = []
    for r in report.models:
        worker = next((t for t in r.engine if t.thread == "worker"), None)
        cells = [fmt((t := _exported(r, runtime, precision)) and t.images_per_s, 2)
                 for runtime, precision in EXPORTED_PATHS]
        small4 = _cell(r, SMALL_PHOTO, 4)
        served = f"{r.service.runtime} {r.service.precision}" if r.service else "–"
        rows.append([r.arch, fmt(worker and worker.images_per_s, 2), *cells,
                     _x(r.ratios.get("best_int8_vs_onnxruntime_fp32")),
                     f"{fmt(small4 and small4.images_per_s, 2)} ({served})",
                     _x(r.ratios.get("service_c4_500x375_vs_onnxruntime_fp32_b1"))])
    headers = ["model", "torch engine b1 (fresh process)",
               *[f"{runtime} {precision}" for runtime, precision in EXPORTED_PATHS],
               "best int8 / onnxruntime fp32", "service img/s c4 500x375 (runtime)", "service c4 / onnxruntime fp32 b1"]
    return markdown_table(headers, rows) + "\n\n" + _machine_line(report)


def readme_table(report: BenchReport) -> str:
    """One row per model for the README, ratios included, with the machine underneath."""
    rows = []
    for r in report.models:
        base, main = r.baseline, [t for t in r.engine if t.thread == "main"]
        lanes = next((t for t in r.engine if t.thread.endswith("lanes")), None)
        small1, large1, small4 = _cell(r, "500x375", 1), _cell(r, "4000x3000", 1), _cell(r, "500x375", 4)
        other4 = _cell(r, "500x375", 4, default_batch=False)
        rows.append([
            r.arch, fmt(r.gflop_per_image, 1), fmt(base and base.images_per_s, 2),
            " / ".join(fmt(t.images_per_s, 2) for t in main) or "–", fmt(lanes and lanes.images_per_s, 2),
            _x(r.ratios.get("engine_best_vs_baseline")), _pct(r.ratios.get("engine_fraction_of_matmul")),
            fmt(small4 and small4.images_per_s, 2), _pct(r.ratios.get("service_c4_500x375_vs_engine_b1")),
            f"{fmt(small1 and small1.p50_ms, 0)} / {fmt(large1 and large1.p50_ms, 0)} "
            f"({_x(r.ratios.get('p50_4000x3000_vs_500x375_c1'))})",
            f"{fmt(other4 and other4.images_per_s, 2)} ({_x(r.ratios.get('service_c4_other_batching_vs_default'))})",
            f"{fmt(r.train_plain and r.train_plain.images_per_s, 2)} → "
            f"{fmt(r.train_project and r.train_project.images_per_s, 2)} ({_x(r.ratios.get('train_project_vs_plain'))})",
        ])
    batches = "/".join(f"b{t.batch}" for t in (report.models[0].engine if report.models else []) if t.thread == "main")
    peak = next((f"{m.tflops:.2f} TFLOP/s" for m in report.matmul if m.dtype != "fp32"), "–")
    headers = ["model", "GFLOP/img", "baseline img/s (fp32, eager, NCHW, b1)", f"engine img/s {batches}",
               "engine img/s b1 on lanes",
               "engine best / baseline", f"engine GFLOP/s of bf16 matmul ({peak})", "service img/s, c4, 500x375",
               "service / fastest engine b1", "p50 ms 500x375 / 4000x3000 (c1)",
               "service img/s c4, micro-batching switched (vs default)", "train img/s plain → project"]
    return markdown_table(headers, rows) + "\n\n" + _machine_line(report)


def _machine_line(report: BenchReport) -> str:
    m = report.machine
    size = report.models[0].size if report.models else 0
    gpu = f" · {m.gpu}" if m.gpu else ""
    return (f"{report.device} · {m.cpu} ({', '.join(m.cpu_flags) or 'no AVX-512'}) · {m.usable_cores} cores"
            f"{gpu} · torch {m.torch} · {size}x{size} input")


def render(report: BenchReport) -> str:
    parts = [("Machine", machine_table(report)), ("Matrix-product rate (same run)", matmul_table(report)),
             ("Model only (random weights)", model_table(report)),
             ("Exported runtimes (ONNX; img/s, batch 1, all cores)", runtime_table(report)),
             ("Service end to end (HTTP, loopback, Accept: image/png)", service_table(report)),
             ("Training step", train_table(report)), ("Ratios", ratio_table(report))]
    return "\n\n".join(f"### {title}\n\n{table}" for title, table in parts)


