"""What each kind of answer costs end to end: every rendering of /segment and the remove.bg endpoint's variants,
for a 500x375 and a 4000x3000 JPEG, one request at a time over HTTP on loopback.

    python -m bench.answers                                   # starts the service from this tree (~2 min)
    python -m bench.answers --url before=http://127.0.0.1:8001 --url after=http://127.0.0.1:8002

With ``--url`` (repeatable, ``name=URL``) it measures services that are already running, for instance two
builds side by side, and alternates between them round by round, so that a slower or busier minute of the
machine falls on every one of them. Each cell is the median over ``--rounds`` of each round's p50; the last
columns are the first service's time over each other one's. Photos are the service benchmark's synthetic JPEGs
(``bench.common.synthetic_photo``); without ``--url`` the service runs the embedded default model.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import encode_image, machine_info, markdown_table, running_server, synthetic_photo

PHOTOS = {"500x375": (500, 375), "4000x3000": (4000, 3000)}
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "weights" / "default.pt"
# (label, path, form fields); every answer is asked for as an image
ANSWERS: list[tuple[str, str, dict[str, str]]] = [
    ("segment mask", "/segment?format=png", {}),
    ("segment overlay", "/segment?format=png", {"output": "overlay"}),
    ("segment cutout", "/segment?format=png", {"output": "cutout"}),
    ("segment alpha", "/segment?format=png", {"output": "alpha"}),
    ("removebg (soft RGBA)", "/v1.0/removebg", {"size": "full"}),
    ("removebg channels=alpha, soft", "/v1.0/removebg", {"size": "full", "channels": "alpha"}),
    ("removebg format=zip", "/v1.0/removebg", {"size": "full", "format": "zip"}),
    ("removebg size=hd", "/v1.0/removebg", {"size": "hd"}),
    ("removebg size=preview", "/v1.0/removebg", {"size": "preview"}),
]


def p50_ms(url: str, path: str, form: dict[str, str], jpeg: bytes, requests: int) -> float:
    """p50 of ``requests`` sequential requests on one keep-alive connection, after one untimed request."""
    field = "image_file" if path.startswith("/v1.0/removebg") else "image"
    times = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for index in range(requests + 1):
            started = time.perf_counter()
            response = client.post(path, files={field: ("photo.jpg", jpeg, "image/jpeg")}, data=form)
            if response.status_code != 200:
                raise RuntimeError(f"{url}{path} {form}: {response.status_code} {response.text[:300]}")
            if index:
                times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def measure(services: dict[str, str], rounds: int, requests: int) -> list[list[str]]:
    jpegs = {label: encode_image(synthetic_photo(w, h, seed=i), "JPEG", 90)
             for i, (label, (w, h)) in enumerate(PHOTOS.items())}
    cells: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(rounds):
        for answer, path, form in ANSWERS:
            for photo, jpeg in jpegs.items():
                count = requests if photo == "500x375" else max(3, requests // 3)
                for name, url in services.items():
                    cells.setdefault((answer, photo, name), []).append(p50_ms(url, path, form, jpeg, count))
    rows = []
    first = next(iter(services))
    for answer, _, _ in ANSWERS:
        for photo in jpegs:
            medians = {name: statistics.median(cells[(answer, photo, name)]) for name in services}
            ratios = [f"{medians[first] / medians[name]:.2f}x" for name in list(services)[1:]]
            rows.append([answer, photo, *(f"{medians[name]:.0f}" for name in services), *ratios])
    return rows


def _named_url(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not url.startswith("http"):
        raise argparse.ArgumentTypeError(f"expected name=http://host:port, got {text!r}")
    return name, url.rstrip("/")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", type=_named_url, action="append", default=[],
                        help="name=URL of a running service (repeatable); default: start one from this tree")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every cell (default 3)")
    parser.add_argument("--requests", type=int, default=12,
                        help="timed requests per cell and round for the small photo, a third for the large")
    args = parser.parse_args(argv)
    machine = machine_info()
    if args.url:
        rows, names = measure(dict(args.url), args.rounds, args.requests), [name for name, _ in args.url]
    else:
        with tempfile.TemporaryDirectory(prefix="petseg-answers-") as tmp, \
                running_server(DEFAULT_MODEL, Path(tmp)) as server:
            rows, names = measure({"this tree": server.url}, args.rounds, args.requests), ["this tree"]
    print(f"{machine.cpu}, {machine.usable_cores} usable cores, load average {machine.load_average}")
    print(markdown_table(["answer", "photo", *(f"{name} p50 ms" for name in names),
                          *(f"{names[0]} / {name}" for name in names[1:])], rows))


if __name__ == "__main__":
    main()
