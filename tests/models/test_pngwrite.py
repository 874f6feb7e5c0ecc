"""The banded PNG writer for pictures (gray, gray + alpha, RGB, RGBA): decoders read back the very pixels,
whatever the number of bands, and the Up filter earns its place."""
from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from app.imaging import encode_png as encode_picture_png
from models.imaging.pngwrite import MASK_SETTINGS, PICTURE_SETTINGS, encode_png

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _picture(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Smooth rows (what the Up filter is for) above random ones (where it must still be exact)."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    ramp = (np.arange(width) * 255 // max(width - 1, 1)).astype(np.uint8)
    image[: height // 2] = ramp[:, None] if channels > 1 else ramp
    return image


def _idat(png: bytes) -> bytes:
    """The concatenated IDAT data of a PNG, walking its chunks and checking each one's CRC."""
    position, data = 8, b""
    while position < len(png):
        length, kind = struct.unpack(">I4s", png[position:position + 8])
        body = png[position + 8:position + 8 + length]
        (crc,) = struct.unpack(">I", png[position + 8 + length:position + 12 + length])
        assert crc == zlib.crc32(body, zlib.crc32(kind)), kind
        if kind == b"IDAT":
            data += body
        position += 12 + length
    return data


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (301, 257), (40, 1)])
def test_pictures_decode_to_the_same_pixels(threads: int, channels: int, shape: tuple[int, int]) -> None:
    image = _picture(*shape, channels, seed=shape[0] * 7 + channels * 3 + threads)
    png = encode_png(image, threads)
    decoded = Image.open(io.BytesIO(png))
    decoded.load()  # Pillow checks the chunk CRCs
    assert decoded.mode == MODES[channels] and decoded.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(decoded), image)
    # libpng (through OpenCV) as a second decoder; it answers BGR(A), and drops LA's alpha unless asked
    if channels in (1, 3, 4):
        read = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        expected = image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR if channels == 3
                                                            else cv2.COLOR_RGBA2BGRA)
        np.testing.assert_array_equal(read.reshape(expected.shape), expected)


def test_every_row_is_up_filtered_and_the_stream_checksum_holds() -> None:
    image = _picture(90, 33, 3, seed=1)
    raw = zlib.decompress(_idat(encode_png(image, 4)))  # raises on a wrong Adler-32
    rows = np.frombuffer(raw, np.uint8).reshape(90, 1 + 33 * 3)
    assert (rows[:, 0] == 2).all()  # Up, on band boundaries too
    lines = image.reshape(90, -1)
    np.testing.assert_array_equal(rows[0, 1:], lines[0])
    np.testing.assert_array_equal(rows[1:, 1:], lines[1:] - lines[:-1])  # uint8: modulo 256


def test_the_up_filter_makes_smooth_pictures_smaller() -> None:
    yy, xx = np.mgrid[0:256, 0:256]
    smooth = np.dstack([xx, yy, (xx + yy) // 2]).astype(np.uint8)  # gradients: no runs without a filter
    assert len(encode_png(smooth, 1, PICTURE_SETTINGS)) < len(encode_png(smooth, 1, MASK_SETTINGS)) / 4


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4), np.float32),
                                 np.zeros((2, 4, 4, 3), np.uint8), np.zeros(4, np.uint8)])
def test_what_is_not_an_8_bit_picture_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 array"):
        encode_png(bad, 2)


def test_large_pictures_take_the_threaded_writer_and_stay_identical() -> None:
    image = _picture(700, 500, 4, seed=3)  # 1.4 MB: above the cut-over
    decoded = Image.open(io.BytesIO(encode_picture_png(image)))
    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(decoded), image)


def test_non_contiguous_views_are_written_as_their_pixels() -> None:
    image = _picture(60, 80, 3, seed=4)
    view = image[5:50:2, 10:70]  # strided rows, as a crop or a slice gives
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(view, 3)))), view)


def _encode_large_then_exit(result: Any) -> None:  # a multiprocessing queue
    photo = np.random.default_rng(1).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    result.put(len(encode_png(photo, threads=2)))


def test_a_forked_process_writes_large_pngs_with_a_pool_of_its_own() -> None:
    """A pre-forking server (or a test runner) forks after the pool's threads started: the child must not hand
    its bands to threads it does not have."""
    import multiprocessing

    large = np.random.default_rng(1).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    expected = len(encode_png(large, threads=2))  # the pool exists, with threads, in this process
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    child = context.Process(target=_encode_large_then_exit, args=(result,))
    child.start()
    child.join(timeout=120)  # a bound on a deadlock, not a speed check: the write takes milliseconds
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0 and result.get(timeout=5) == expected
