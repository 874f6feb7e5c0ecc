"""Untrusted bytes in, arrays out; arrays in, PNG bytes out. No FastAPI: unit-testable on its own.

Decoding is defensive: the pixel count is checked from the header before any pixel is decoded, JPEGs are
decoded at a reduced scale when only the model needs them (draft mode), EXIF orientation is applied, and every
mode Pillow knows (1, L, LA, P, I;16, RGBA, CMYK, YCbCr...) ends up as RGB.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ApiError
from models.imaging.pngwrite import encode_gray_png
from models.imaging.pngwrite import encode_png as write_png

__all__ = ["DecodedImage", "decode_ground_truth", "decode_image", "encode_mask_png", "encode_png"]

SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"}
_ORIENTATION_SWAPS_AXES = {5, 6, 7, 8}
# Leading bytes of the formats we read: a file that starts like one but does not open is corrupt (400), not an
# unsupported format (415). WebP is RIFF....WEBP, checked apart.
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP"}
Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit from the header, before decoding


@dataclass
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8, possibly smaller than the original when decoded in draft mode
    width: int  # the upright original size, which every answer is given at
    height: int
    format: str


def _claimed_format(data: bytes) -> str | None:
    """The format the file's first bytes announce, if it is one we read."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)


def _open(data: bytes, field: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ApiError(400, f"{field} is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed is not None:
            raise ApiError(400, f"{field} starts like a {claimed} file but its header is corrupt") from None
        raise ApiError(415, f"{field}: not an image format this service reads "
                            f"(send JPEG, PNG, WebP, BMP or TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(400, f"{field} could not be read: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise ApiError(415, f"{field} is {image.format}; send JPEG, PNG, WebP, BMP or TIFF")
    width, height = image.size
    if width < 1 or height < 1:
        raise ApiError(400, f"{field} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ApiError(413, f"{field} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                       code="resolution_too_high")
    return image


def _load(image: Image.Image, field: str, orientation: int | None = None) -> Image.Image:
    """Decode pixels, upright, turning Pillow's many failure modes into one 400. With the EXIF ``orientation``
    already read, an upright image is not copied (``exif_transpose`` copies even when there is nothing to do)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            if orientation == 1:
                return image
            return ImageOps.exif_transpose(image) or image
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"{field} is truncated or corrupt: {exc}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        top = float(array.max()) or 1.0
        gray = (array / top * 255.0).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _orientation(image: Image.Image, field: str) -> int:
    """EXIF orientation (1 = upright); reading it can hit the truncated end of a file."""
    try:
        value = image.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(400, f"{field} is truncated or corrupt: {exc}") from None
    return value if isinstance(value, int) else 1


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None, field: str = "image"
                 ) -> DecodedImage:
    """Decode an upload. With ``draft_size``, JPEGs decode at the smallest DCT scale still >= that size."""
    image = _open(data, field, max_pixels)
    orientation = _orientation(image, field)
    width, height = image.size
    if orientation in _ORIENTATION_SWAPS_AXES:
        width, height = height, width
    if draft_size and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_size, draft_size))
    upright = _load(image, field, orientation)
    return DecodedImage(_to_rgb(upright), width, height, image.format or "?")


def decode_ground_truth(data: bytes, *, size: tuple[int, int], max_pixels: int, border_is_pet: bool = True
                        ) -> np.ndarray:
    """A boolean HxW mask from a PNG holding 0/255, 0/1 or an Oxford trimap (1 pet, 2 background, 3 border)."""
    image = _load(_open(data, "ground_truth", max_pixels), "ground_truth")
    if image.size != size:
        raise ApiError(422, f"ground_truth is {image.size[0]}x{image.size[1]} but the image is "
                            f"{size[0]}x{size[1]}; they must match")
    if image.mode not in ("1", "L", "P", "I", "I;16"):
        image = image.convert("L")
    values = np.asarray(image)
    if values.ndim != 2:
        raise ApiError(422, "ground_truth must be a single-channel mask")
    if values.dtype == bool:  # mode "1"
        return values.copy()
    present = set(np.unique(values).tolist())
    if present <= {0, 255}:
        return values > 0
    if present <= {0, 1}:
        return values == 1
    if present <= {1, 2, 3}:
        return (values == 1) | (border_is_pet & (values == 3))
    shown = sorted(present)[:8]
    raise ApiError(422, f"ground_truth is not a mask: expected values 0/255, 0/1 or trimap 1/2/3, found {shown}"
                        f"{'...' if len(present) > 8 else ''}")


def encode_png(array: np.ndarray) -> bytes:
    """PNG of a picture (HxW gray, HxWx3 RGB or HxWx4 RGBA uint8): Up row filter and zlib-ng (models.imaging.pngwrite),
    split across the cores when large."""
    return write_png(array)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """8-bit grayscale PNG of a mask: 255 pet, 0 background. Accepts booleans or 0/255 uint8."""
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    return encode_gray_png(np.ascontiguousarray(mask))
