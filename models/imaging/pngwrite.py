"""8-bit PNGs (gray, gray + alpha, RGB, RGBA) written by several threads: at 12 megapixels one deflate stream
is the cost of the service's answer, and of ``petseg-predict``'s masks and overlays.

Deflate cannot split one stream across threads, but it can be cut: each thread compresses a band of rows with a
fresh compressor (no back-references across bands) and ends it with a sync flush, which closes on a byte
boundary without marking the last block, so the bands concatenate into one valid deflate stream. The zlib
wrapper's Adler-32 checksum is combined from the bands' checksums. The compressor is zlib-ng's (same format as
zlib, SIMD run matching and checksums), which releases the GIL, as NumPy's row filter does.

Two settings (``DeflateSettings``), one per kind of picture:

- **masks** (long runs of 0 and 255): no row filter and run-length matching. A 4000x3000 mask takes 4.9 ms on
  one core and 2.4 ms on two (stdlib zlib: ~16 and ~11 ms).
- **pictures** (cutouts, overlays, probability maps): the Up filter (each byte minus the one above it, which
  turns smooth areas into runs of small numbers) and level 2. On a 4000x3000 RGBA cutout this writes a smaller
  file than Pillow at ``compress_level=1`` in less than half the time on one core (``python -m bench.png``).
"""
from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# zlib-ng: the deflate format of zlib, ~7x faster here (SIMD run matching, checksums)
from zlib_ng import zlib_ng as zlib

from models.host import usable_cores

__all__ = ["MASK_SETTINGS", "PICTURE_SETTINGS", "DeflateSettings", "adler32_combine", "encode_gray_png",
           "encode_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_NONE, FILTER_UP = 0, 2  # PNG row filter types
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: gray, gray + alpha, RGB, RGBA
_ADLER_MOD = 65521
_pool: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class DeflateSettings:
    """How every row is filtered and deflated."""

    row_filter: int  # FILTER_NONE or FILTER_UP
    level: int  # zlib-ng: 1 is its quick matcher; 2 finds the longer matches that filtered photos have
    strategy: int
    parallel_from: int  # bytes from which bands go to several threads; below, hand-offs cost more than they save


# Masks cost ~0.4 ns a byte to deflate (a 4000x3000 one 4.9 ms on one core), so only the big ones are split;
# pictures cost ~15 ns a byte (a 500x375 RGB overlay ~8 ms on one core, ~4 on two: python -m bench.png), so
# splitting them pays from a few hundred kilobytes.
MASK_SETTINGS = DeflateSettings(FILTER_NONE, 1, zlib.Z_RLE, parallel_from=2_000_000)
PICTURE_SETTINGS = DeflateSettings(FILTER_UP, 2, zlib.Z_DEFAULT_STRATEGY, parallel_from=256 * 1024)
MAX_THREADS = 8


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="petseg-png")
    return _pool


def _forget_pool_in_child() -> None:
    """A forked process (a pre-forking server, a test runner's workers) inherits the pool object but none of its
    threads: bands handed to it would wait forever. The child makes its own on first use."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool_in_child)


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of A + B from those of A and B.

    Adler-32 is (s2 << 16) | s1 with s1 = 1 + sum of bytes and s2 = sum of the running s1 after each byte. After
    A, every byte of B adds A's s1 - 1 more to each running s1, hence s2 grows by len(B) * (s1(A) - 1).
    """
    s1_a, s2_a = first & 0xFFFF, first >> 16
    s1_b, s2_b = second & 0xFFFF, second >> 16
    s1 = (s1_a + s1_b - 1) % _ADLER_MOD
    s2 = (s2_a + s2_b + second_length * (s1_a - 1)) % _ADLER_MOD
    return (s2 << 16) | s1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _filtered_rows(lines: np.ndarray, start: int, stop: int, row_filter: int) -> np.ndarray:
    """Rows ``start:stop`` of ``lines`` (H x W*channels bytes), each after its filter-type byte."""
    band = lines[start:stop]
    rows = np.empty((stop - start, lines.shape[1] + 1), np.uint8)
    rows[:, 0] = row_filter
    if row_filter == FILTER_NONE:
        rows[:, 1:] = band
    elif start == 0:  # Up: the row above the image counts as zeros
        rows[0, 1:] = band[0]
        np.subtract(band[1:], band[:-1], out=rows[1:, 1:])
    else:
        np.subtract(band, lines[start - 1:stop - 1], out=rows[:, 1:])  # uint8 wraps modulo 256, as PNG wants
    return rows


def _compress_band(lines: np.ndarray, start: int, stop: int, last: bool, settings: DeflateSettings
                   ) -> tuple[bytes, int, int]:
    """Rows ``start:stop``, filtered, as raw deflate; plus their Adler-32 and length."""
    rows = _filtered_rows(lines, start, stop, settings.row_filter)
    compressor = zlib.compressobj(settings.level, zlib.DEFLATED, -15, 9, settings.strategy)
    data = compressor.compress(rows) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return data, zlib.adler32(rows), rows.size


def encode_png(image: np.ndarray, threads: int | None = None, settings: DeflateSettings = PICTURE_SETTINGS
               ) -> bytes:
    """PNG bytes of an HxW or HxWxC (C = 1 to 4) uint8 array, compressed in ``threads`` bands of rows (default:
    one per usable core, up to ``MAX_THREADS``, from ``settings.parallel_from`` bytes; else one)."""
    channels = 1 if image.ndim == 2 else image.shape[2] if image.ndim == 3 else 0
    if image.dtype != np.uint8 or channels not in _COLOUR_TYPES:
        raise ValueError(f"expected an HxW or HxWxC (C = 1 to 4) uint8 array, got shape {image.shape} "
                         f"dtype {image.dtype}")
    height, width = image.shape[:2]
    lines = np.ascontiguousarray(image).reshape(height, width * channels)
    if threads is None:
        threads = min(usable_cores(), MAX_THREADS) if image.nbytes >= settings.parallel_from else 1
    bands = max(1, min(threads, height))
    bounds = np.linspace(0, height, bands + 1).astype(int)
    jobs = [(lines, int(bounds[i]), int(bounds[i + 1]), i == bands - 1, settings) for i in range(bands)]
    if bands == 1:
        results = [_compress_band(*jobs[0])]
    else:
        pool = _executor(bands)
        results = [f.result() for f in [pool.submit(_compress_band, *job) for job in jobs]]
    checksum = 1
    for _, band_checksum, length in results:
        checksum = adler32_combine(checksum, band_checksum, length)
    stream = b"\x78\x01" + b"".join(data for data, _, _ in results) + struct.pack(">I", checksum)
    colour_type = _COLOUR_TYPES[channels]
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)  # 8 bits a sample, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def encode_gray_png(image: np.ndarray, threads: int | None = None) -> bytes:
    """PNG bytes of an HxW uint8 mask (mostly 0 and 255), compressed in ``threads`` bands of rows."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 array, got shape {image.shape} dtype {image.dtype}")
    return encode_png(image, threads, MASK_SETTINGS)
