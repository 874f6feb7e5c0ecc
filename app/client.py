"""``petseg segment IMAGE...``: send photos to a running petseg service and write the masks next to them.

    petseg segment photos/*.jpg --out masks/ --overlay
    petseg segment cat.jpg --ground-truth cat_trimap.png --url http://gpu-box:8000
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

__all__ = ["SegmentRow", "main", "segment_files"]

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """Something the user must fix or know: printed as one line, exit code 2."""


@dataclass
class SegmentRow:
    file: str
    size: str
    foreground_fraction: float
    dice: float | None
    mask_path: Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petseg", description="Client for a running petseg service.")
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser("segment", help="segment images and write <name>_mask.png files")
    seg.add_argument("images", nargs="+", type=Path, help="image files")
    seg.add_argument("--url", default=os.environ.get("PETSEG_URL", DEFAULT_URL), help="service URL ($PETSEG_URL)")
    seg.add_argument("--out", type=Path, default=None, help="folder for the outputs (default: next to each input)")
    seg.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    seg.add_argument("--ground-truth", nargs="+", type=Path, default=None,
                     help="one mask per image (same order), or a folder holding <name>.png for each image")
    seg.add_argument("--threshold", type=float, default=None, help="0..1 (default: the service's)")
    seg.add_argument("--api-key", default=os.environ.get("PETSEG_API_KEY"), help="API key ($PETSEG_API_KEY)")
    seg.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    return parser


def match_ground_truths(images: list[Path], truths: list[Path] | None) -> list[Path | None]:
    if not truths:
        return [None] * len(images)
    if len(truths) == 1 and truths[0].is_dir():
        return [truths[0] / f"{image.stem}.png" if (truths[0] / f"{image.stem}.png").is_file() else None
                for image in images]
    if len(truths) != len(images):
        raise ClientError(f"--ground-truth got {len(truths)} file(s) for {len(images)} image(s)")
    return list(truths)


def _post(client: httpx.Client, image: Path, truth: Path | None, output: str, threshold: float | None) -> dict:
    files = {"image": (image.name, image.read_bytes())}
    if truth is not None:
        files["ground_truth"] = (truth.name, truth.read_bytes())
    data = {"output": output} if threshold is None else {"output": output, "threshold": str(threshold)}
    response = client.post("/segment", files=files, data=data, headers={"Accept": "application/json"})
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:200]
        raise ClientError(f"{image}: the service answered {response.status_code}: {detail}")
    return response.json()


def segment_files(client: httpx.Client, images: list[Path], *, out: Path | None = None, overlay: bool = False,
                  truths: list[Path | None] | None = None, threshold: float | None = None,
                  progress: bool = True) -> list[SegmentRow]:
    """Segment each image through ``client`` (base URL already set) and write the PNGs; return table rows."""
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise ClientError(f"file not found: {', '.join(missing)}")
    truths = truths or [None] * len(images)
    rows = []
    for image, truth in tqdm(list(zip(images, truths, strict=True)), desc="segment", unit="img",
                             disable=not progress or len(images) < 2):
        body = _post(client, image, truth, "overlay" if overlay else "mask", threshold)
        folder = out or image.parent
        folder.mkdir(parents=True, exist_ok=True)
        mask_path = folder / f"{image.stem}_mask.png"
        mask_path.write_bytes(base64.b64decode(body["mask_png"]))
        if overlay:
            (folder / f"{image.stem}_overlay.png").write_bytes(base64.b64decode(body["output_png"]))
        rows.append(SegmentRow(image.name, f"{body['width']}x{body['height']}", body["foreground_fraction"],
                               body["dice"], mask_path))
    return rows


def format_table(rows: list[SegmentRow]) -> str:
    header = ("file", "size", "foreground", "dice")
    lines = [(r.file, r.size, f"{r.foreground_fraction:.1%}", "-" if r.dice is None else f"{r.dice:.3f}")
             for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *lines])


def main(argv: list[str] | None = None, client: httpx.Client | None = None) -> int:
    args = build_parser().parse_args(argv)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    own_client = client is None
    client = client or httpx.Client(base_url=args.url, timeout=args.timeout, headers=headers)
    try:
        truths = match_ground_truths(args.images, args.ground_truth)
        rows = segment_files(client, args.images, out=args.out, overlay=args.overlay, truths=truths,
                             threshold=args.threshold, progress=sys.stderr.isatty())
    except ClientError as exc:
        print(f"petseg: {exc}", file=sys.stderr)
        return 2
    except httpx.TransportError as exc:
        print(f"petseg: cannot reach petseg at {args.url}: {exc}", file=sys.stderr)
        return 2
    finally:
        if own_client:
            client.close()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
