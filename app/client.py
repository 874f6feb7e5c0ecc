"""``petseg segment IMAGE...``: send photos to a running petseg service and write the masks it returns.

    petseg segment photos/*.jpg --out masks/ --overlay
    petseg segment cat.jpg --ground-truth cat_trimap.png --url http://gpu-box:8000
    petseg segment photos/*.jpg --cutout --soft --background '#ffffff' --crop --crop-margin 5% --out cutouts/
    petseg segment --watch inbox/ --cutout --soft          # photos as they arrive, into inbox/segmented/

Writes ``<stem>_mask.png`` (plus ``<stem>_overlay.png`` with ``--overlay`` or ``<stem>_cutout.png`` with
``--cutout``) next to each image or into ``--out``, then prints one table row per image. ``--watch DIR``
polls the folder instead and segments each new photo once its size has stopped changing, skipping those whose
outputs are already there. Files are written atomically. A photo the service refuses or fails on is named on
stderr and the others are still sent; the table lists those done and a last line counts the rest. Output
folders are checked before anything is sent. Exit codes: 0 all done; 2 something to fix on this side (a missing
file, an output folder that cannot be written, the service unreachable, a photo refused with a 4xx answer: the
message says which); 1 the service failed (5xx) on a photo.
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from app.error_text import error_text

__all__ = ["BatchResult", "ClientError", "Rendering", "ResultRow", "ServiceError", "format_table", "main", "match_ground_truths",
           "segment_files", "watch_folder"]

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_SERVER, EXIT_USAGE = 0, 1, 2
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 60.0


class ClientError(Exception):
    """Something the user must fix or know (missing file, 4xx, unreachable service): one line, exit code 2."""

    exit_code = EXIT_USAGE


class ServiceError(ClientError):
    """The service answered 5xx: not the user's fault, exit code 1."""

    exit_code = EXIT_SERVER


@dataclass(frozen=True)
class Rendering:
    """What to ask for besides the mask: the overlay, or a cutout (soft edges, background, crop)."""

    overlay: bool = False
    cutout: bool = False
    soft: bool = False
    background: str | None = None  # "#RRGGBB" or "transparent"
    background_image: Path | None = None
    crop: bool = False
    crop_margin: str | None = None

    @property
    def suffix(self) -> str | None:
        """The extra file's name ending (``_overlay``, ``_cutout``), or None for the mask alone."""
        return "_overlay" if self.overlay else "_cutout" if self.cutout else None

    def form(self) -> dict[str, str]:
        if self.overlay:
            data = {"output": "overlay"}
        elif self.cutout:
            data = {"output": "alpha" if self.soft else "cutout"}
            if self.background:
                data["background"] = self.background
        else:
            data = {"output": "mask"}
        if self.crop:
            data["crop"] = "true"
            if self.crop_margin:
                data["crop_margin"] = self.crop_margin
        return data


@dataclass(frozen=True)
class ResultRow:
    file: str
    width: int
    height: int
    foreground_fraction: float
    dice: float | None
    mask_path: Path
    rendering_path: Path | None = None  # the overlay or the cutout, when asked for


# ---------------------------------------------------------------- arguments
def threshold_arg(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def interval_arg(text: str) -> float:
    value = float(text)
    if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
        raise argparse.ArgumentTypeError(f"{text} is not between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g} seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petseg",
                                     description="Command-line client for a running petseg service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seg = commands.add_parser(
        "segment", help="segment images and write <stem>_mask.png files",
        description="Segment images with a petseg service and write <stem>_mask.png files.")
    seg.add_argument("images", nargs="*", type=Path, metavar="IMAGE",
                     help="image files (JPEG, PNG, WebP, ...); or --watch a folder")
    seg.add_argument("--watch", type=Path, default=None, metavar="DIR",
                     help="segment the photos in DIR and then each new one as it arrives (until Ctrl-C); photos "
                          "whose outputs exist are skipped; outputs go to --out (default DIR/segmented)")
    seg.add_argument("--interval", type=interval_arg, default=1.0, metavar="S",
                     help=f"with --watch: seconds between looks at the folder ({MIN_INTERVAL_S:g}-"
                          f"{MAX_INTERVAL_S:g}, default 1)")
    seg.add_argument("--url", default=os.environ.get("PETSEG_URL") or DEFAULT_URL,
                     help=f"service URL (default: $PETSEG_URL or {DEFAULT_URL})")
    seg.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="folder for the outputs (default: next to each image)")
    extra = seg.add_mutually_exclusive_group()
    extra.add_argument("--overlay", action="store_true",
                       help="also write <stem>_overlay.png (the photo tinted where pet)")
    extra.add_argument("--cutout", action="store_true",
                       help="also write <stem>_cutout.png: the pet cut out (background transparent, or --background)")
    seg.add_argument("--soft", action="store_true",
                     help="with --cutout: soft edges that follow the photo (the service's output=alpha)")
    seg.add_argument("--background", default=None, metavar="COLOUR",
                     help="with --cutout: #RRGGBB to put under the pet (default transparent)")
    seg.add_argument("--background-image", type=Path, default=None, metavar="FILE",
                     help="with --cutout: an image to put under the pet, scaled to cover")
    seg.add_argument("--crop", action="store_true",
                     help="crop the overlay or cutout to the pet (the mask stays whole)")
    seg.add_argument("--crop-margin", default=None, metavar="M",
                     help="with --crop: margin in pixels (20) or percent of the pet's size (10%%)")
    seg.add_argument("--ground-truth", nargs="+", type=Path, default=None, metavar="GT",
                     help="one mask per image, in the same order, or one folder holding <stem>.png per "
                          "image; adds the Dice column")
    seg.add_argument("--threshold", type=threshold_arg, default=None, metavar="T",
                     help="probability threshold in [0, 1] (default: the service's)")
    seg.add_argument("--api-key", default=os.environ.get("PETSEG_API_KEY"), metavar="KEY",
                     help="sent as X-API-Key (default: $PETSEG_API_KEY)")
    seg.add_argument("--timeout", type=timeout_arg, default=120.0, metavar="S",
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


def check_folder_writable(folder: Path) -> None:
    """Refuse, before anything is sent, an output folder that cannot be made or written: a file in its place or
    above it, or no write permission on the nearest folder that exists. Creates nothing."""
    if folder.exists() and not folder.is_dir():
        raise ClientError(f"cannot write into {folder}: it is a file, not a folder")
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise ClientError(f"cannot write into {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ClientError(f"cannot write into {folder}: {existing} is not writable")


def output_paths(images: Sequence[Path], out: Path | None, suffix: str | None = None
                 ) -> list[tuple[Path, Path | None]]:
    """Where each image's mask (and overlay or cutout: ``suffix``) go; refuses two images that would write the
    same file."""
    paths: list[tuple[Path, Path | None]] = []
    seen: dict[Path, Path] = {}
    for image in images:
        folder = out if out is not None else image.parent
        mask = folder / f"{image.stem}_mask.png"
        if mask in seen:
            raise ClientError(f"{seen[mask]} and {image} would both write {mask}: "
                              "rename one, or drop --out")
        seen[mask] = image
        paths.append((mask, folder / f"{image.stem}{suffix}.png" if suffix else None))
    return paths


def _new_file_mode() -> int:
    """0o666 less the umask, as ``open()`` would create the file (models.atomic_files, without torch)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: a reader (or --watch) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, _new_file_mode())  # mkstemp's 0o600 would hide the masks from a web server
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def post_image(client: httpx.Client, image: Path, truth: Path | None, *, rendering: Rendering,
               threshold: float | None) -> dict[str, Any]:
    files = {"image": (image.name, image.read_bytes())}
    if truth is not None:
        files["ground_truth"] = (truth.name, truth.read_bytes())
    if rendering.background_image is not None:
        files["background_image"] = (rendering.background_image.name, rendering.background_image.read_bytes())
    data = rendering.form()
    if threshold is not None:
        data["threshold"] = repr(threshold)
    response = client.post("/segment", params={"format": "json"}, files=files, data=data)
    raise_for_answer(response, image)
    return response.json()


def segment_one(client: httpx.Client, image: Path, truth: Path | None, mask_path: Path,
                rendering_path: Path | None, *, rendering: Rendering, threshold: float | None) -> ResultRow:
    """Segment one image and write its mask (and overlay or cutout)."""
    body = post_image(client, image, truth, rendering=rendering, threshold=threshold)
    write_atomically(mask_path, base64.b64decode(body["mask_png"]))
    if rendering_path is not None:
        rendered = body["output_png"] or body["mask_png"]  # output_png is null only for the plain mask
        write_atomically(rendering_path, base64.b64decode(rendered))
    return ResultRow(str(image), body["width"], body["height"], body["foreground_fraction"], body["dice"],
                     mask_path, rendering_path)


@dataclass
class BatchResult:
    """The photos done (one row each) and those the service refused or failed on (the error of each)."""

    rows: list[ResultRow]
    failures: list[ClientError]

    @property
    def exit_code(self) -> int:
        """1 when the service failed on any photo, else 2 when it refused any, else 0."""
        codes = {failure.exit_code for failure in self.failures}
        return EXIT_SERVER if EXIT_SERVER in codes else EXIT_USAGE if codes else EXIT_OK


def segment_files(client: httpx.Client, images: Sequence[Path], *, out: Path | None = None,
                  rendering: Rendering = Rendering(), truths: Sequence[Path | None] | None = None,
                  threshold: float | None = None, progress: bool | None = None,
                  report: Callable[[str], None] | None = None) -> BatchResult:
    """Segment each image through ``client`` (its base URL set) and write the PNGs.

    Inputs and output folders are checked before the first request. A photo the service refuses (4xx) or fails
    on (5xx) is passed to ``report`` (stderr by default) and the next one is sent: one bad photo does not cost
    the rest of a batch. An unreachable service ends the batch (``httpx.TransportError``): every photo would
    fail the same way. ``progress``: None shows a bar on a terminal when there is more than one image.
    """
    report = report or (lambda line: print(line, file=sys.stderr))
    check_files_exist(images, "image")
    truths = list(truths) if truths is not None else [None] * len(images)
    targets = output_paths(images, out, rendering.suffix)
    for folder in sorted({mask.parent for mask, _ in targets}):
        check_folder_writable(folder)
    show_bar = len(images) > 1 and progress is not False
    result = BatchResult([], [])
    for image, truth, (mask_path, rendering_path) in tqdm(list(zip(images, truths, targets, strict=True)),
                                                          desc="segment", unit="image", file=sys.stderr,
                                                          disable=None if show_bar else True):
        try:
            result.rows.append(segment_one(client, image, truth, mask_path, rendering_path, rendering=rendering,
                                           threshold=threshold))
        except ClientError as exc:
            result.failures.append(exc)
            report(f"petseg: {exc}")
    return result


# ---------------------------------------------------------------- watching a folder
@dataclass
class _Seen:
    size: int
    mtime_ns: int
    failed: bool = False  # refused by the service: not retried until the file changes


def _is_done(photo: Path, outputs: Sequence[Path]) -> bool:
    """Every output exists and is at least as new as the photo (a photo replaced later is done again)."""
    photo_mtime = photo.stat().st_mtime_ns
    return all(path.is_file() and path.stat().st_mtime_ns >= photo_mtime for path in outputs)


def watch_folder(client: httpx.Client, folder: Path, *, out: Path, rendering: Rendering = Rendering(),
                 threshold: float | None = None, interval: float = 1.0, stop: threading.Event | None = None,
                 report: Callable[[str], None] = print) -> int:
    """Segment the photos directly in ``folder``, then each new one, every ``interval`` seconds until ``stop``
    is set (or Ctrl-C). A photo is sent once its size and time stamp held still between two looks (so a copy
    in progress is not read half-written) and its outputs are not already in ``out``. A photo the service
    refuses (4xx) is reported and skipped until it changes; when the service cannot be reached or fails (5xx),
    the photo is tried again at the next look. Returns the number of photos segmented."""
    if not folder.is_dir():
        raise ClientError(f"--watch: {folder} is not a folder")
    if out.resolve() == folder.resolve():
        raise ClientError("--watch: --out must not be the watched folder (the outputs would be taken for photos)")
    stop = stop or threading.Event()
    seen: dict[Path, _Seen] = {}
    done = 0
    report(f"watching {folder} every {interval:g} s; outputs in {out}; Ctrl-C to stop")
    while not stop.is_set():
        for photo in sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()):
            try:
                stat = photo.stat()
            except FileNotFoundError:  # removed since the listing
                continue
            previous = seen.get(photo)
            seen[photo] = _Seen(stat.st_size, stat.st_mtime_ns)
            if previous is None or (previous.size, previous.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                continue  # new or still changing: look again next time
            if previous.failed:
                seen[photo].failed = True
                continue
            [(mask_path, rendering_path)] = output_paths([photo], out, rendering.suffix)
            if _is_done(photo, [mask_path] + ([rendering_path] if rendering_path else [])):
                continue
            try:
                row = segment_one(client, photo, None, mask_path, rendering_path, rendering=rendering,
                                  threshold=threshold)
            except ServiceError as exc:
                report(f"petseg: {exc} (trying again)")
                continue
            except ClientError as exc:
                report(f"petseg: {exc}")
                seen[photo].failed = True
                continue
            except httpx.TransportError as exc:
                report(f"petseg: {photo}: {error_text(exc)} (trying again)")
                continue
            done += 1
            report(format_table([row]).splitlines()[1])
        stop.wait(interval)
    return done


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
    return f"cannot reach petseg at {url}: {error_text(exc)}"


def make_client(url: str, api_key: str | None, timeout: float) -> httpx.Client:
    headers = {"X-API-Key": api_key} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def rendering_from(args: argparse.Namespace) -> Rendering:
    """The rendering the flags ask for; flags that need another one missing are a usage error."""
    for flag, value in (("--soft", args.soft), ("--background", args.background),
                        ("--background-image", args.background_image)):
        if value and not args.cutout:
            raise ClientError(f"{flag} needs --cutout")
    if args.crop_margin and not args.crop:
        raise ClientError("--crop-margin needs --crop")
    if args.background and args.background_image:
        raise ClientError("give --background or --background-image, not both")
    if args.background_image is not None:
        check_files_exist([args.background_image], "background image")
    return Rendering(overlay=args.overlay, cutout=args.cutout, soft=args.soft, background=args.background,
                     background_image=args.background_image, crop=args.crop, crop_margin=args.crop_margin)


def run(args: argparse.Namespace, http: httpx.Client) -> int:
    rendering = rendering_from(args)
    if args.watch is not None:
        if args.images or args.ground_truth:
            raise ClientError("--watch takes no IMAGE arguments and no --ground-truth")
        out = args.out if args.out is not None else args.watch / "segmented"
        check_folder_writable(out)
        try:
            watch_folder(http, args.watch, out=out, rendering=rendering, threshold=args.threshold,
                         interval=args.interval)
        except KeyboardInterrupt:
            print("petseg: stopped watching", file=sys.stderr)
        return EXIT_OK
    if not args.images:
        raise ClientError("give IMAGE files, or --watch DIR")
    truths = match_ground_truths(args.images, args.ground_truth)
    result = segment_files(http, args.images, out=args.out, rendering=rendering, truths=truths,
                           threshold=args.threshold)
    if result.rows:
        print(format_table(result.rows))
    if result.failures:
        print(f"petseg: {len(result.rows)} of {len(args.images)} photo(s) segmented, "
              f"{len(result.failures)} not (named above)", file=sys.stderr)
    return result.exit_code


def main(argv: Sequence[str] | None = None, client: httpx.Client | None = None) -> int:
    """Entry point of ``petseg``. Tests pass ``client`` (e.g. a FastAPI TestClient) to skip the network."""
    args = build_parser().parse_args(argv)
    own_client = client is None
    http = make_client(args.url, args.api_key, args.timeout) if client is None else client
    try:
        return run(args, http)
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


if __name__ == "__main__":
    sys.exit(main())
