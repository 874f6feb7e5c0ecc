"""Where the subject may be and where it goes: a region of interest, and the subject scaled and moved on its
canvas (remove.bg's ``roi``, ``scale`` and ``position``).

No HTTP here: text that does not parse raises ``ValueError`` with a message for the user, and a region that does
not fit the photo raises :class:`RegionError` with remove.bg's code; callers add the field's name and status.

    roi = parse_roi("10% 0% 90% 100%")           # x1 y1 x2 y2, each px or % of the photo's width / height
    alpha = keep_inside(alpha, roi.box(width, height))
    rgb, alpha = place_subject(rgb, alpha, Placement(scale=0.8, position=(0.5, 0.5)))
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from app.compose import Box, subject_box

__all__ = ["Placement", "RegionError", "Roi", "keep_inside", "parse_placement", "parse_roi", "place_subject"]

_COORDINATE = re.compile(r"(\d+(?:\.\d+)?)(px|%)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")
MIN_SCALE_PERCENT = 10.0


class RegionError(ValueError):
    """A region of interest that does not fit the photo; ``code`` is remove.bg's name for why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Coordinate:
    value: float
    percent: bool

    def pixels(self, extent: int) -> float:
        return self.value * extent / 100.0 if self.percent else self.value


@dataclass(frozen=True)
class Roi:
    """A rectangle from (x1, y1) to (x2, y2); outside it nothing can be the subject."""

    x1: Coordinate
    y1: Coordinate
    x2: Coordinate
    y2: Coordinate

    @property
    def is_whole_image(self) -> bool:
        return (all(c.percent and c.value == 0 for c in (self.x1, self.y1))
                and all(c.percent and c.value == 100 for c in (self.x2, self.y2)))

    def box(self, width: int, height: int) -> Box:
        """The rectangle in the photo's pixels: ``roi_exceeds_bounds`` past its edges, ``roi_region_empty``
        when it holds no pixel."""
        x1, x2 = self.x1.pixels(width), self.x2.pixels(width)
        y1, y2 = self.y1.pixels(height), self.y2.pixels(height)
        if max(x1, x2) > width or max(y1, y2) > height:
            raise RegionError("roi_exceeds_bounds", f"the region {x1:g},{y1:g} to {x2:g},{y2:g} reaches past the "
                                                    f"{width}x{height} photo")
        left, top, right, bottom = round(x1), round(y1), round(x2), round(y2)
        if right <= left or bottom <= top:
            raise RegionError("roi_region_empty", f"the region {x1:g},{y1:g} to {x2:g},{y2:g} holds no pixel")
        return Box(left, top, right - left, bottom - top)


def parse_roi(text: str) -> Roi:
    """``x1 y1 x2 y2``, each pixels (``20px``) or percent of the photo's width or height (``10%``)."""
    parts = text.split()
    if len(parts) != 4:
        raise ValueError(f"{text!r}: give four coordinates, x1 y1 x2 y2, each in px or % (e.g. 0% 0% 100% 100%)")
    coordinates = []
    for part in parts:
        match = _COORDINATE.fullmatch(part.lower())
        if match is None:
            raise ValueError(f"{part!r} is not a coordinate: give pixels (20px) or a percentage (10%)")
        value, unit = float(match.group(1)), match.group(2)
        coordinates.append(Coordinate(value, unit == "%"))
    return Roi(*coordinates)


def keep_inside(image: np.ndarray, box: Box) -> np.ndarray:
    """A copy of ``image`` (HxW) that is 0 outside ``box``."""
    kept = np.zeros_like(image)
    rows, cols = box.slices()
    kept[rows, cols] = image[rows, cols]
    return kept


@dataclass(frozen=True)
class Placement:
    """``scale``: the subject's share of the canvas (its box fitted inside scale x the canvas, aspect kept);
    None keeps its size. ``position``: where its box goes, (0, 0) top left to (1, 1) bottom right, as CSS's
    background-position; None keeps it where it is."""

    scale: float | None = None
    position: tuple[float, float] | None = None


def parse_placement(scale: str, position: str) -> Placement | None:
    """remove.bg's ``scale`` (``original`` or 10%-100%) and ``position`` (``original``, ``center``, one
    percentage for both axes or two); a scale without a position centres the subject. None: nothing moves."""
    scale_value: float | None = None
    scale = scale.strip().lower()
    if scale != "original":
        match = _PERCENT.fullmatch(scale)
        if match is None or not MIN_SCALE_PERCENT <= float(match.group(1)) <= 100:
            raise ValueError(f"{scale!r}: give original or a percentage from 10% to 100%")
        scale_value = float(match.group(1)) / 100
    where = position.strip().lower()
    spot: tuple[float, float] | None
    if where == "original":
        spot = (0.5, 0.5) if scale_value is not None else None
    elif where == "center":
        spot = (0.5, 0.5)
    else:
        parts = where.split()
        matches = [_PERCENT.fullmatch(part) for part in parts]
        if len(parts) not in (1, 2) or any(m is None or float(m.group(1)) > 100 for m in matches):
            raise ValueError(f"{position!r}: give original, center, or one or two percentages from 0% to 100%")
        values = [float(m.group(1)) / 100 for m in matches]  # type: ignore[union-attr]
        spot = (values[0], values[-1])
    if scale_value is None and spot is None:
        return None
    return Placement(scale_value, spot)


def place_subject(rgb: np.ndarray, alpha: np.ndarray, placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """The subject (the box of ``alpha`` > 0) cut out of ``rgb`` and ``alpha``, scaled and moved on a canvas of
    the same size; the rest of the canvas is black and clear. Without a subject, both come back as they are."""
    box = subject_box(alpha)
    if box is None:
        return rgb, alpha
    height, width = alpha.shape
    new_w, new_h = box.width, box.height
    if placement.scale is not None:
        factor = min(placement.scale * width / box.width, placement.scale * height / box.height)
        new_w = min(width, max(1, round(box.width * factor)))
        new_h = min(height, max(1, round(box.height * factor)))
    rows, cols = box.slices()
    subject_rgb, subject_alpha = rgb[rows, cols], alpha[rows, cols]
    if (new_w, new_h) != (box.width, box.height):
        interpolation = cv2.INTER_AREA if new_w < box.width else cv2.INTER_LINEAR
        subject_rgb = cv2.resize(subject_rgb, (new_w, new_h), interpolation=interpolation)
        subject_alpha = cv2.resize(subject_alpha, (new_w, new_h), interpolation=interpolation)
    if placement.position is None:  # scaled about the box's centre
        left = round(box.x + (box.width - new_w) / 2)
        top = round(box.y + (box.height - new_h) / 2)
    else:
        left = round(placement.position[0] * (width - new_w))
        top = round(placement.position[1] * (height - new_h))
    left, top = min(max(left, 0), width - new_w), min(max(top, 0), height - new_h)
    canvas_rgb, canvas_alpha = np.zeros_like(rgb), np.zeros_like(alpha)
    canvas_rgb[top:top + new_h, left:left + new_w] = subject_rgb
    canvas_alpha[top:top + new_h, left:left + new_w] = subject_alpha
    return canvas_rgb, canvas_alpha
