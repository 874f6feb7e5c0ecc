"""``petseg segment IMAGE...``: send photos to a running petseg service and write the masks it returns.

    petseg segment photos/*.jpg --out masks/ --overlay
    petseg segment cat.jpg --ground-truth cat_trimap.png --url http://gpu-box:8000

Writes ``<stem>_mask.png`` (and ``<stem>_overlay.png`` with ``--overlay``) next to each image or into
``--out``, then prints one table row per image. Exit codes: 0 all done; 2 something to fix on this side (a
missing file, the service unreachable, a 4xx answer: the message says which); 1 the service failed (5xx).
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

__all__ = ["ClientError", "ResultRow", "ServiceError", "format_table", "main", "match_ground_truths",
           "segment_files"]

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_SERVER, EXIT_USAGE = 0, 1, 2


class ClientError(Exception):
    """Something the user must fix or know (missing file, 4xx, unreachable service): one line, exit code 2."""

    exit_code = EXIT_USAGE


class ServiceError(ClientError):
    """The service answered 5xx: not the user's fault, exit code 1."""

    exit_code = EXIT_SERVER


@dataclass(frozen=True)
class ResultRow:
    file: str
    width: int
    height: int
    foreground_fraction: float
    dice: float | None
    mask_path: Path
    overlay_path: Path | None = None


# ---------------------------------------------------------------- arguments
def threshold_arg(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petseg",
                                     description="Command-line client for a running petseg service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seg = commands.add_parser(
        "segment", help="segment images and write <stem>_mask.png files",
        description="Segment images with a petseg service and write <stem>_mask.png files.")
    seg.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                     help="image files (JPEG, PNG, WebP, ...)")
    seg.add_argument("--url", default=os.environ.get("PETSEG_URL") or DEFAULT_URL,
                     help=f"service URL (default: $PETSEG_URL or {DEFAULT_URL})")
    seg.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="folder for the outputs (default: next to each image)")
    seg.add_argument("--overlay", action="store_true",
                     help="also write <stem>_overlay.png (the photo tinted where pet)")
    seg.add_argument("--ground-truth", nargs="+", type=Path, default=None, metavar="GT",
                     help="one mask per image, in the same order, or one folder holding <stem>.png per "
                          "image; adds the Dice column")
    seg.add_argument("--threshold", type=threshold_arg, default=None, metavar="T",
                     help="probability threshold in [0, 1] (default: the service's)")
    seg.add_argument("--api-key", default=os.environ.get("PETSEG_API_KEY"), metavar="KEY",
                     help="sent as X-API-Key (default: $PETSEG_API_KEY)")
    seg.add_argument("--timeout", type=float, default=120.0, metavar="S",
                     help="seconds per request (default 120)")
    return parser


# ---------------------------------------------------------------- inputs
def check_files_exist(paths: Sequence[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ClientError(f"{what} not found: {', '.join(missing)}")


def find_in_folder(folder: Path, image: Path) -> Path | None:
    """The ground truth for ``image`` in ``folder``: ``<stem>.png`` first, else any file with that stem."""
    preferred = folder / f"{image.stem}.png"
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in folder.glob(f"{image.stem}.*")
                        if p.is_file() and p.resolve() != image.resolve())
    return candidates[0] if candidates else None


def match_ground_truths(images: Sequence[Path], truths: Sequence[Path] | None) -> list[Path | None]:
    """Pair each image with its ground truth: given one per image (same order), or looked up in one folder.

    In a folder an image without a matching file just gets no Dice; a list of the wrong length is an error.
    """
    if not truths:
        return [None] * len(images)
    if len(truths) == 1 and truths[0].is_dir():
        return [find_in_folder(truths[0], image) for image in images]
    if len(truths) != len(images):
        raise ClientError(f"--ground-truth got {len(truths)} file(s) for {len(images)} image(s): give one "
                          "per image, in the same order, or a folder")
    check_files_exist(truths, "ground truth")
    return list(truths)


def output_paths(images: Sequence[Path], out: Path | None, overlay: bool) -> list[tuple[Path, Path | None]]:
    """Where each image's mask (and overlay) go; refuses two images that would write the same file."""
    paths: list[tuple[Path, Path | None]] = []
    seen: dict[Path, Path] = {}
    for image in images:
        folder = out if out is not None else image.parent
        mask = folder / f"{image.stem}_mask.png"
        if mask in seen:
            raise ClientError(f"{seen[mask]} and {image} would both write {mask}: "
                              "rename one, or drop --out")
        seen[mask] = image
        paths.append((mask, folder / f"{image.stem}_overlay.png" if overlay else None))
    return paths


# ---------------------------------------------------------------- HTTP
def describe_detail(detail: Any) -> str:
    """FastAPI's 422 detail is a list of {loc, msg}; ours is a string."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query")]
                parts.append(f"{'.'.join(loc)}: {item.get('msg', '')}" if loc else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def raise_for_answer(response: httpx.Response, image: Path) -> None:
    if response.status_code < 400:
        return
    try:
        detail = describe_detail(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        detail = response.text.strip()[:200] or response.reason_phrase
    error = ServiceError if response.status_code >= 500 else ClientError
    raise error(f"{image}: the service answered {response.status_code}: {detail}")


def post_image(client: httpx.Client, image: Path, truth: Path | None, *, overlay: bool,
               threshold: float | None) -> dict[str, Any]:
    files = {"image": (image.name, image.read_bytes())}
    if truth is not None:
        files["ground_truth"] = (truth.name, truth.read_bytes())
    data = {"output": "overlay" if overlay else "mask"}
    if threshold is not None:
        data["threshold"] = repr(threshold)
    response = client.post("/segment", params={"format": "json"}, files=files, data=data)
    raise_for_answer(response, image)
    return response.json()


def segment_files(client: httpx.Client, images: Sequence[Path], *, out: Path | None = None,
                  overlay: bool = False, truths: Sequence[Path | None] | None = None,
                  threshold: float | None = None, progress: bool | None = None) -> list[ResultRow]:
    """Segment each image through ``client`` (its base URL set) and write the PNGs; return one row per image.

    ``progress``: None shows a bar on a terminal when there is more than one image; False never does.
    """
    check_files_exist(images, "image")
    truths = list(truths) if truths is not None else [None] * len(images)
    targets = output_paths(images, out, overlay)
    show_bar = len(images) > 1 and progress is not False
    rows = []
    for image, truth, (mask_path, overlay_path) in tqdm(list(zip(images, truths, targets, strict=True)),
                                                        desc="segment", unit="image", file=sys.stderr,
                                                        disable=None if show_bar else True):
        body = post_image(client, image, truth, overlay=overlay, threshold=threshold)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.write_bytes(base64.b64decode(body["mask_png"]))
        if overlay_path is not None:
            overlay_path.write_bytes(base64.b64decode(body["output_png"]))
        rows.append(ResultRow(str(image), body["width"], body["height"], body["foreground_fraction"],
                              body["dice"], mask_path, overlay_path))
    return rows


# ---------------------------------------------------------------- output
def format_table(rows: Sequence[ResultRow]) -> str:
    """An aligned plain-text table: file, WxH, foreground fraction and Dice ('-' without ground truth)."""
    header = ("file", "size", "foreground", "dice")
    cells = [(row.file, f"{row.width}x{row.height}", f"{row.foreground_fraction:.1%}",
              "-" if row.dice is None else f"{row.dice:.3f}") for row in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def render(line: Sequence[str]) -> str:
        # Text columns to the left, numbers to the right.
        return "  ".join([line[0].ljust(widths[0]), line[1].rjust(widths[1]), line[2].rjust(widths[2]),
                          line[3].rjust(widths[3])]).rstrip()

    return "\n".join(render(line) for line in [header, *cells])


def describe_transport_error(exc: httpx.TransportError, url: str, timeout: float) -> str:
    # A connection that was made but not answered in time is not "unreachable": say so differently.
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return f"petseg at {url} did not answer within {timeout:g} s (see --timeout)"
    return f"cannot reach petseg at {url}: {exc or type(exc).__name__}"


def make_client(url: str, api_key: str | None, timeout: float) -> httpx.Client:
    headers = {"X-API-Key": api_key} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def main(argv: Sequence[str] | None = None, client: httpx.Client | None = None) -> int:
    """Entry point of ``petseg``. Tests pass ``client`` (e.g. a FastAPI TestClient) to skip the network."""
    args = build_parser().parse_args(argv)
    own_client = client is None
    http = make_client(args.url, args.api_key, args.timeout) if client is None else client
    try:
        truths = match_ground_truths(args.images, args.ground_truth)
        rows = segment_files(http, args.images, out=args.out, overlay=args.overlay, truths=truths,
                             threshold=args.threshold)
    except ClientError as exc:
        print(f"petseg: {exc}", file=sys.stderr)
        return exc.exit_code
    except httpx.TransportError as exc:
        print(f"petseg: {describe_transport_error(exc, args.url, args.timeout)}", file=sys.stderr)
        return EXIT_USAGE
    except httpx.InvalidURL as exc:
        print(f"petseg: cannot reach petseg at {args.url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if own_client:
            http.close()
    print(format_table(rows))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
