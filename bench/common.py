"""Shared pieces of the benchmark and the load test: machine facts, the server subprocess, synthetic photos,
an HTTP load driver, percentiles, markdown tables and JSON output. Nothing here leaves the loopback
interface."""
from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import torch
from PIL import Image, ImageDraw

from models import build_model
from models.checkpoint import Checkpoint, save_checkpoint
from models.engine.runtime import usable_cores

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
# What decides which runtime and precision is fastest: vector width, bf16, and int8 dot products (VNNI, AMX).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------- machine facts
@dataclass
class Machine:
    cpu: str
    cpu_flags: list[str]
    logical_cores: int
    usable_cores: int
    memory_gb: float
    torch: str
    torch_threads: int
    python: str
    platform: str
    gpu: str | None
    cuda: str | None
    load_average: list[float]


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text(errors="ignore").splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return model, flags


def _memory_gb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return 0.0


def machine_info() -> Machine:
    model, flags = _cpuinfo()
    usable = usable_cores()
    cuda = torch.cuda.is_available()
    return Machine(
        cpu=model, cpu_flags=[f for f in CPU_FLAGS if f in flags], logical_cores=os.cpu_count() or 1,
        usable_cores=usable, memory_gb=_memory_gb(), torch=torch.__version__,
        torch_threads=torch.get_num_threads(), python=platform.python_version(), platform=platform.platform(),
        gpu=torch.cuda.get_device_name(0) if cuda else None, cuda=torch.version.cuda if cuda else None,
        load_average=[round(x, 2) for x in os.getloadavg()],
    )


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far, from ``/proc/<pid>/stat``; None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def proc_status_mb(pid: int, key: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a process in MiB from /proc, else None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


# ------------------------------------------------------------------------------------------ server process
@dataclass
class Server:
    url: str
    pid: int
    startup_s: float
    log_path: Path

    def cpu_s(self) -> float | None:
        return process_cpu_s(self.pid)

    def rss_mb(self) -> float | None:
        return proc_status_mb(self.pid, "VmRSS")

    def peak_rss_mb(self) -> float | None:
        return proc_status_mb(self.pid, "VmHWM")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_checkpoint(folder: Path, arch: str, image_size: int, seed: int = 0) -> tuple[Path, Checkpoint]:
    """A checkpoint of a randomly initialised model; epoch 1 so the service agrees to serve it."""
    torch.manual_seed(seed)
    checkpoint = Checkpoint(arch, build_model(arch).state_dict(), image_size=image_size, epoch=1)
    return save_checkpoint(checkpoint, folder / f"{arch}-{image_size}.pt"), checkpoint


def _server_env(checkpoint: Path, device: str, extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment minus its ``PETSEG_*`` settings (an API key would turn answers into 401s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETSEG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update({"PETSEG_CHECKPOINT": str(checkpoint), "PETSEG_DEVICE": device, **extra})
    return env


def wait_until_ready(process: subprocess.Popen[bytes], url: str, timeout_s: float,
                     output: Callable[[], str]) -> None:
    """Poll ``/ready`` until it answers 200; raise with the server's ``output()`` if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {output()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready within {timeout_s:g}s: {output()[-2000:]}")
        time.sleep(0.2)


@contextmanager
def running_server(checkpoint: Path, workdir: Path, *, device: str = "cpu", env: dict[str, str] | None = None,
                   timeout_s: float = 180.0) -> Iterator[Server]:
    """``python -m app`` on a free loopback port, run from ``workdir`` (so no stray ``.env`` is read)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / f"server-{port}.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=workdir, env=_server_env(checkpoint, device, env or {}), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until_ready(proc, url, timeout_s, lambda: f"(log: {log_path})\n" + log_path.read_text(errors="replace"))
        yield Server(url, proc.pid, time.perf_counter() - started, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------- synthetic photos
def synthetic_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 'photo': smooth colour field, blurred shapes and sensor-like noise, so that JPEG sizes
    and decode times resemble a camera picture rather than a flat test card."""
    rng = np.random.default_rng(seed)
    field_ = rng.uniform(20, 235, size=(6, 8, 3)).astype(np.float32)
    base = cv2.resize(field_, (width, height), interpolation=cv2.INTER_CUBIC)
    canvas = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(14):
        x0, x1 = sorted(rng.uniform(0, width, 2))
        y0, y1 = sorted(rng.uniform(0, height, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([tuple(p) for p in rng.uniform(0, (width, height), (5, 2))], fill=colour)
    sigma = max(0.8, width / 1500)
    image = cv2.GaussianBlur(np.asarray(canvas), (0, 0), sigma).astype(np.int16)
    noise = rng.normal(0.0, 6.0, size=image.shape).astype(np.int16)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def encode_image(rgb: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": quality} if fmt == "JPEG" else {"compress_level": 6}
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- load driver
@dataclass(frozen=True)
class RequestSpec:
    """One POST /segment: multipart files, form fields, headers, and the statuses that count as correct."""

    kind: str
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expected: tuple[int, ...] = (200,)
    hostile: bool = False


@dataclass
class Outcome:
    kind: str
    status: int  # 0: no HTTP answer (connection error or client timeout)
    latency_s: float
    correct: bool
    hostile: bool
    error: str | None = None


def _body_problem(response: httpx.Response, spec: RequestSpec) -> str | None:
    """A 200 must carry what was asked for: a PNG, or JSON with a base64 mask."""
    if response.status_code != 200:
        return None
    if "image/png" in spec.headers.get("Accept", ""):
        return None if response.content.startswith(PNG_SIGNATURE) else "200 without a PNG body"
    try:
        return None if "mask_png" in response.json() else "200 JSON without mask_png"
    except ValueError:
        return "200 with a body that is not JSON"


async def send_one(client: httpx.AsyncClient, spec: RequestSpec) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post("/segment", files=spec.files, data=spec.data, headers=spec.headers)
    except httpx.HTTPError as exc:
        latency = time.perf_counter() - started
        return Outcome(spec.kind, 0, latency, False, spec.hostile, f"{type(exc).__name__}: {exc}"[:200])
    latency = time.perf_counter() - started
    problem = _body_problem(response, spec)
    correct = response.status_code in spec.expected and problem is None
    return Outcome(spec.kind, response.status_code, latency, correct, spec.hostile, problem)


async def drive(url: str, pick: Callable[[int], RequestSpec], *, concurrency: int, max_requests: int,
                max_seconds: float, timeout_s: float = 180.0,
                on_done: Callable[[int], None] | None = None) -> tuple[list[Outcome], float]:
    """Send up to ``max_requests`` (no new ones after ``max_seconds``) from ``concurrency`` workers, each on
    its own keep-alive connection. Returns the outcomes and the wall time."""
    outcomes: list[Outcome] = []
    counter = itertools.count()
    started = time.perf_counter()
    deadline = started + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while True:
                index = next(counter)
                if index >= max_requests or time.perf_counter() >= deadline:
                    return
                outcomes.append(await send_one(client, pick(index)))
                if on_done is not None:
                    on_done(len(outcomes))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - started


def _serialise(url: str, spec: RequestSpec) -> tuple[str, int, bytes]:
    """Host, port and the exact bytes of the request, multipart body included, encoded once by httpx."""
    request = httpx.Request("POST", f"{url}/segment", files=spec.files, data=spec.data, headers=spec.headers)
    body = request.read()
    head = "POST /segment HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    return request.url.host, request.url.port or 80, head.encode("latin-1") + b"\r\n" + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" not in headers:
        raise ValueError(f"answer without Content-Length (headers: {sorted(headers)})")
    return status, await reader.readexactly(int(headers["content-length"]))


async def drive_repeated(url: str, spec: RequestSpec, *, concurrency: int, max_requests: int, max_seconds: float,
                         timeout_s: float = 180.0) -> tuple[list[Outcome], float]:
    """:func:`drive` for one request sent over and over, with a client that costs next to nothing.

    The request is encoded once and written as bytes; answers are read by Content-Length. A load generator on
    the same small machine otherwise takes a real share of the CPU from the server it measures (httpx costs
    ~5 ms of CPU per request here), as wrk-style tools avoid."""
    host, port, payload = _serialise(url, spec)
    counter = itertools.count()
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next(counter) < max_requests and time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    writer.write(payload)
                    status, body = await asyncio.wait_for(_read_response(reader), timeout_s)
                except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                    outcomes.append(Outcome(spec.kind, 0, time.perf_counter() - sent, False, spec.hostile,
                                            f"{type(exc).__name__}: {exc}"[:200]))
                    return
                latency = time.perf_counter() - sent
                problem = None
                if status == 200 and "image/png" in spec.headers.get("Accept", ""):
                    problem = None if body.startswith(PNG_SIGNATURE) else "200 without a PNG body"
                outcomes.append(Outcome(spec.kind, status, latency, status in spec.expected and problem is None,
                                        spec.hostile, problem))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - started


# ------------------------------------------------------------------------------------- numbers and output
def median_ms(work: Callable[[], object], repeats: int, *, warm_up: bool = True) -> float:
    """Median milliseconds of ``repeats`` calls of ``work``; after one untimed call (allocations, thread pools)
    unless the caller made it."""
    if warm_up:
        work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def percentile_ms(seconds: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else None


def fmt(value: float | int | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(payload: Any, out: Path | None, stem: str) -> Path:
    """Write ``payload`` (dataclasses welcome) to ``out`` or ``bench/results/<stem>-<UTC timestamp>.json``."""
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = RESULTS_DIR / f"{stem}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    return out


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
