"""What the service's PNG answers cost to write: the banded zlib-ng writer against Pillow, in one run.

    python -m bench.png               # about a minute; --repeats N for steadier medians

For a 500x375 and a 4000x3000 synthetic photo (smooth colours, shapes and sensor-like noise, as the service
benchmark uses) with an elliptical pet over half of it, times (median of ``--repeats``) each picture answer,
``output=probability`` (gray), ``overlay`` (RGB) and ``cutout`` (RGBA), three ways:

- **Pillow**: ``Image.save(format="PNG", compress_level=1)``, the writer these answers had before (for the
  cutout: the photo stacked with its alpha as it was, colour kept under the transparent background);
- **banded, one thread**: ``models.imaging.pngwrite.encode_png`` (Up filter, zlib-ng level 2) on one core (for the
  cutout: ``app.compose.composite``, which blacks out what is fully transparent, plus the writer);
- **banded, all cores**: what the service does (``app.imaging.encode_png``).

Each row gives milliseconds and kilobytes, and Pillow's time over the service's, with the CPU's name.
"""
from __future__ import annotations

import argparse
import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from app.compose import composite
from app.cores import usable_cores
from app.imaging import encode_png as service_png
from bench.common import machine_info, markdown_table, median_ms, synthetic_photo
from models.engine.runtime import keep_freed_memory
from models.imaging.overlay import tint
from models.imaging.pngwrite import encode_png

SIZES = ((500, 375), (4000, 3000))


def _time_and_size(work: Callable[[], bytes], repeats: int) -> tuple[float, int]:
    """Median milliseconds of ``work`` and the size of what it writes (the untimed first call)."""
    size = len(work())
    return median_ms(work, repeats, warm_up=False), size


def pillow_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def pictures(width: int, height: int) -> dict[str, tuple[Callable[[], bytes], Callable[[], bytes],
                                                         Callable[[], bytes]]]:
    """Per answer: (Pillow, banded on one thread, the service's writer), each from the same pixels."""
    photo = synthetic_photo(width, height)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - width / 2) / (0.4 * width)) ** 2 + ((yy - height / 2) / (0.4 * height)) ** 2 < 1
    alpha = inside.astype(np.uint8) * 255  # an ellipse over half of the photo
    probability = cv2.GaussianBlur(alpha, (0, 0), max(2.0, width / 100))  # smooth, as up-sampled maps are
    overlay = tint(photo, inside)
    return {
        "probability (L)": (lambda: pillow_png(probability), lambda: encode_png(probability, 1),
                            lambda: service_png(probability)),
        "overlay (RGB)": (lambda: pillow_png(overlay), lambda: encode_png(overlay, 1),
                          lambda: service_png(overlay)),
        "cutout (RGBA)": (lambda: pillow_png(np.dstack([photo, alpha])),
                          lambda: encode_png(composite(photo, alpha, None), 1),
                          lambda: service_png(composite(photo, alpha, None))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per cell (default 7)")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the service runs: big buffers are reused, not page-faulted afresh each time
    machine = machine_info()
    rows = []
    for width, height in SIZES:
        for answer, (pillow, one_thread, service) in pictures(width, height).items():
            cells = [_time_and_size(work, args.repeats) for work in (pillow, one_thread, service)]
            (old_ms, _), (_, _), (new_ms, _) = cells
            rows.append([f"{width}x{height}", answer,
                         *(f"{ms:.1f} ms, {size / 1024:.0f} KB" for ms, size in cells),
                         f"{old_ms / new_ms:.1f}x"])
    print(f"{machine.cpu}, {usable_cores()} usable cores, load average {machine.load_average}")
    print(markdown_table(["photo", "answer", "Pillow compress_level=1", "banded, 1 thread",
                          f"banded, {min(usable_cores(), 8)} threads (the service)", "Pillow / service"],
                         rows))


if __name__ == "__main__":
    main()
