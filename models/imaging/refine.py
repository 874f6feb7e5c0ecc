"""Edge-aware up-sampling of a probability map: the guided filter (He, Sun and Tang, ECCV 2010).

The model sees the photo at a few hundred pixels a side, so a plain bilinear up-sampling of its probability map
gives soft, blurry outlines that ignore the photo's edges (a staircase once thresholded). The guided filter
fits, in every window of the photo, a linear model ``q = a . I + b`` from the photo ``I`` to the up-sampled
probability ``p``: where the photo has an edge, ``q`` follows it; where the photo is flat, ``q`` is the local
mean of ``p``. ``eps`` decides which photo edges count (the variance of ``I`` a window needs before ``q``
follows it rather than smoothing ``p``).

Big photos use the fast guided filter (He and Sun, arXiv:1505.00996, 2015): the coefficients ``a`` and ``b``
are computed on a down-scaled photo and up-sampled bilinearly, and only ``q = a . I + b`` is evaluated at full
size, in bands of rows: a 12-megapixel photo costs one multiply-add pass over its pixels on top of a filter at
a few hundred pixels a side, and never holds a float copy of the whole photo.

Pure numpy / OpenCV; no torch. ``guided_upsample`` is the entry point::

    alpha = guided_upsample(prob_small, photo)  # (h, w) float32 in [0, 1] + (H, W, 3) uint8 -> (H, W)
"""
from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

__all__ = ["DEFAULT_EPS", "DEFAULT_RADIUS_CELLS", "WORK_PIXELS", "WORK_RADIUS", "default_radius", "guided_filter",
           "guided_upsample"]

Guide = Literal["color", "gray"]

# Chosen on the 30 held-out images of the Oxford-IIIT Pet sample with the embedded model (see README, "Soft
# edges"): a window of four model pixels each way follows the photo's edges best without blurring the
# outline (six and eight blur it visibly); eps barely matters between 1e-4 and 1e-2 (guide on a 0..1 scale).
DEFAULT_RADIUS_CELLS = 4.0
DEFAULT_EPS = 1e-3
WORK_PIXELS = 1_000_000  # photos over this many pixels get their coefficients at this size (fast guided filter)
# The fast guided filter computes the coefficients on the photo scaled down by an integer factor until the
# window's radius is this many pixels (He and Sun keep quality down to a quarter of the radius; here the held-out
# scores above did not change, and a 500x375 photo costs about a third of the full-size filter).
WORK_RADIUS = 8
_BAND_PIXELS = 1 << 20  # full-size pixels evaluated per band: bounds the float scratch memory to ~20 MB


def default_radius(model_size: tuple[int, int], photo_size: tuple[int, int], cells: float = DEFAULT_RADIUS_CELLS
                   ) -> int:
    """Window radius in photo pixels: ``cells`` model pixels (``model_size``, ``photo_size`` are (h, w))."""
    scale = max(photo_size[0] / model_size[0], photo_size[1] / model_size[1])
    return max(1, round(cells * scale))


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, mirrored at the borders; any number of channels."""
    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def _coefficients_gray(guide: np.ndarray, src: np.ndarray, radius: int, eps: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    mean_i = _box(guide, radius)
    mean_p = _box(src, radius)
    cov_ip = _box(guide * src, radius) - mean_i * mean_p
    var_i = _box(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, radius), _box(b, radius)


def _coefficients_color(guide: np.ndarray, src: np.ndarray, radius: int, eps: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The colour guided filter: per window, solve (Sigma + eps I) a = cov(I, p) with Sigma the 3x3 colour
    covariance (closed-form inverse of the symmetric matrix, all pixels at once). Works on contiguous planes:
    OpenCV's box filter and numpy are several times slower on interleaved channels."""
    red, green, blue = cv2.split(guide)
    mean_r, mean_g, mean_b = _box(red, radius), _box(green, radius), _box(blue, radius)
    mean_p = _box(src, radius)
    cov_r = _box(red * src, radius) - mean_r * mean_p
    cov_g = _box(green * src, radius) - mean_g * mean_p
    cov_b = _box(blue * src, radius) - mean_b * mean_p
    rr = _box(red * red, radius) - mean_r * mean_r + eps
    rg = _box(red * green, radius) - mean_r * mean_g
    rb = _box(red * blue, radius) - mean_r * mean_b
    gg = _box(green * green, radius) - mean_g * mean_g + eps
    gb = _box(green * blue, radius) - mean_g * mean_b
    bb = _box(blue * blue, radius) - mean_b * mean_b + eps
    # The inverse of the symmetric matrix [[rr, rg, rb], [rg, gg, gb], [rb, gb, bb]] is adjugate / det.
    inv_rr, inv_rg, inv_rb = gg * bb - gb * gb, rb * gb - rg * bb, rg * gb - rb * gg
    inv_gg, inv_gb, inv_bb = rr * bb - rb * rb, rb * rg - rr * gb, rr * gg - rg * rg
    inv_det = 1.0 / (rr * inv_rr + rg * inv_rg + rb * inv_rb)  # det > 0: Sigma is PSD and eps > 0
    a_r = (inv_rr * cov_r + inv_rg * cov_g + inv_rb * cov_b) * inv_det
    a_g = (inv_rg * cov_r + inv_gg * cov_g + inv_gb * cov_b) * inv_det
    a_b = (inv_rb * cov_r + inv_gb * cov_g + inv_bb * cov_b) * inv_det
    b = mean_p - a_r * mean_r - a_g * mean_g - a_b * mean_b
    mean_a = cv2.merge([_box(a_r, radius), _box(a_g, radius), _box(a_b, radius)])
    return mean_a, _box(b, radius)


def _as_guide(photo: np.ndarray, guide: Guide) -> np.ndarray:
    """uint8 photo -> float32 guide on a 0..1 scale: (H, W, 3) for colour, (H, W) for gray."""
    if photo.ndim == 3 and guide == "gray":
        photo = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    return photo.astype(np.float32) * np.float32(1 / 255)


def _coefficients(photo: np.ndarray, src: np.ndarray, radius: int, eps: float, guide: Guide) -> np.ndarray:
    """The filter's window-averaged coefficients stacked as channels: (a_r, a_g, a_b, b) or (a, b)."""
    guide_image = _as_guide(photo, guide)
    if guide_image.ndim == 3:
        mean_a, mean_b = _coefficients_color(guide_image, src, radius, eps)
        return cv2.merge([*cv2.split(mean_a), mean_b])
    return cv2.merge(list(_coefficients_gray(guide_image, src, radius, eps)))


_INV_255 = 1.0 / 255


def _apply(coefs: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """q = a . I + b for coefficients (h, w, C + 1) and the uint8 photo (guide I = photo / 255) they belong to.

    In colour the photo gets a fourth channel of 255 (RGB -> RGBA): q is then the channel sum of one
    per-channel product (a_r R + a_g G + a_b B + b 255) / 255, without a float copy of the photo."""
    if coefs.shape[2] == 4:
        products = cv2.multiply(coefs, cv2.cvtColor(photo, cv2.COLOR_RGB2RGBA), scale=_INV_255, dtype=cv2.CV_32F)
        return products[..., 0] + products[..., 1] + products[..., 2] + products[..., 3]
    gray = photo if photo.ndim == 2 else cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    a, b = cv2.split(coefs)
    return cv2.scaleAdd(cv2.multiply(a, gray, dtype=cv2.CV_32F), _INV_255, b)


def guided_filter(photo: np.ndarray, src: np.ndarray, radius: int, eps: float = DEFAULT_EPS,
                  guide: Guide = "color") -> np.ndarray:
    """The guided filter at one size: ``photo`` (h, w, 3) or (h, w) uint8 guides ``src`` (h, w) float32.

    Returns float32 (h, w), not clipped (the filter may overshoot ``src``'s range slightly at strong edges)."""
    if photo.shape[:2] != src.shape:
        raise ValueError(f"photo {photo.shape} and src {src.shape} differ in size")
    return _apply(_coefficients(photo, src.astype(np.float32, copy=False), radius, eps, guide), photo)


def _to_output(q: np.ndarray, dtype: type, contrast: float) -> np.ndarray:
    """(q - 0.5) * contrast + 0.5, clipped to [0, 1]; as float32, or rounded to uint8 0..255."""
    if contrast != 1.0:
        q = cv2.addWeighted(q, contrast, q, 0.0, 0.5 * (1.0 - contrast))
    np.clip(q, 0.0, 1.0, out=q)
    if dtype == np.uint8:
        return cv2.convertScaleAbs(q, alpha=255.0)  # rounds; q >= 0 here, so the absolute value is a no-op
    return q


def guided_upsample(prob: np.ndarray, photo: np.ndarray, *, radius: int | None = None, eps: float = DEFAULT_EPS,
                    guide: Guide = "color", work_pixels: int = WORK_PIXELS, contrast: float = 1.0,
                    dtype: type = np.float32) -> np.ndarray:
    """Up-sample a model-size probability map to the photo's size along the photo's edges.

    Args:
        prob: (h, w) float32 probabilities in [0, 1] at the model's resolution (any size; it is bilinearly
            up-sampled first, as ``app.postprocess.to_full_size`` does).
        photo: (H, W, 3) uint8 RGB (or (H, W) gray) at full size: the guide.
        radius: window radius in photo pixels; default ``default_radius`` (four model pixels).
        eps: regularisation on the guide's 0..1 scale; larger smooths more, smaller follows weaker edges.
        guide: ``color`` (the 3x3 colour model: separates a brown cat from a brown-but-different sofa) or
            ``gray`` (luminance only; cheaper).
        work_pixels: photos larger than this get their coefficients at this many pixels (fast guided filter);
            so does any photo whose window is wider than ``WORK_RADIUS`` pixels, at the scale where it is not.
        contrast: 1 gives the refined probability; above 1 steepens it around 0.5 (``(q - .5) * contrast + .5``,
            clipped), which leaves the 0.5 contour where it is: an alpha channel wants the pet fully opaque
            and the background fully clear where the model is merely fairly sure.
        dtype: ``np.float32`` for [0, 1] or ``np.uint8`` for 0..255 (an alpha channel, without a float copy).

    Returns:
        (H, W) array of ``dtype``: the refined probability in [0, 1] (or 0..255 for uint8).
    """
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"prob must be a non-empty (h, w) map, got shape {prob.shape}")
    if photo.dtype != np.uint8 or photo.ndim not in (2, 3) or (photo.ndim == 3 and photo.shape[2] != 3):
        raise ValueError(f"photo must be (H, W, 3) or (H, W) uint8, got shape {photo.shape} dtype {photo.dtype}")
    height, width = photo.shape[:2]
    if radius is None:
        radius = default_radius(prob.shape, (height, width))
    prob = prob.astype(np.float32, copy=False)
    scale = min(1.0, (work_pixels / float(height * width)) ** 0.5, WORK_RADIUS / radius)
    step = math.ceil(1.0 / scale - 1e-9)  # an integer factor: OpenCV's fast INTER_AREA path, exact geometry
    if step == 1 or min(height, width) < 2 * step:  # a small photo: everything at full size
        src = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
        return _to_output(guided_filter(photo, src, radius, eps, guide), dtype, contrast)
    work_w, work_h = width // step, height // step
    small_photo = cv2.resize(photo[:work_h * step, :work_w * step], (work_w, work_h), interpolation=cv2.INTER_AREA)
    # prob sampled where the bilinear up-sampling to (W, H) would put it, at the work pixels' centres
    src = cv2.warpAffine(prob, _grid(prob.shape[1] / width * step, prob.shape[0] / height * step),
                         (work_w, work_h), flags=_WARP, borderMode=cv2.BORDER_REPLICATE)
    coefs = _coefficients(small_photo, src, max(1, round(radius / step)), eps, guide)
    return _upsample_apply(coefs, photo, step, dtype, contrast)


_WARP = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


def _grid(sx: float, sy: float, top: int = 0) -> np.ndarray:
    """The affine map destination pixel -> source pixel of a resize by 1/sx, 1/sy with pixel centres aligned
    (as ``cv2.resize`` does), for destination rows from ``top``: x_src = (x + .5) sx - .5."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, (top + 0.5) * sy - 0.5]])


def _upsample_apply(coefs: np.ndarray, photo: np.ndarray, step: int, dtype: type, contrast: float) -> np.ndarray:
    """q = up(a) . I + up(b) at the photo's size, band by band, ``up`` bilinear from the work grid (one work
    pixel per ``step`` x ``step`` photo pixels): ``warpAffine`` computes each band on its own."""
    height, width = photo.shape[:2]
    out = np.empty((height, width), dtype=np.uint8 if dtype == np.uint8 else np.float32)
    rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = cv2.warpAffine(coefs, _grid(1.0 / step, 1.0 / step, top), (width, bottom - top), flags=_WARP,
                              borderMode=cv2.BORDER_REPLICATE)
        out[top:bottom] = _to_output(_apply(band, photo[top:bottom]), dtype, contrast)
    return out
