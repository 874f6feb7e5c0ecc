"""Which of the answers the service can give an ``Accept`` header prefers (RFC 9110 section 12.5.1).

Each offered type takes the quality (q-value) of the most specific media range that matches it (``image/png``
before ``image/*`` before ``*/*``). The highest quality wins; a tie goes to the type named explicitly, then to
the one named first, then to the default (the first offered). A header that names nothing offered gets the
default too: the service answers rather than refusing with 406, as most clients send ``*/*`` or nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["preferred_type"]


@dataclass(frozen=True)
class _MediaRange:
    type: str
    subtype: str
    quality: float
    position: int

    def specificity(self, media_type: str) -> int:
        """2 for an exact match, 1 for ``type/*``, 0 for ``*/*``, -1 when the range does not match."""
        kind, _, sub = media_type.partition("/")
        if self.type == kind and self.subtype == sub:
            return 2
        if self.type == kind and self.subtype == "*":
            return 1
        if self.type == "*" and self.subtype == "*":
            return 0
        return -1


def _parse_quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(1.0, max(0.0, float(value.strip())))
            except ValueError:
                return 1.0  # a malformed q is ignored, as if absent
    return 1.0


def _parse(accept: str) -> list[_MediaRange]:
    ranges = []
    for position, item in enumerate(accept.split(",")):
        media, *params = item.split(";")
        kind, slash, sub = media.strip().lower().partition("/")
        if not slash or not kind or not sub:
            continue  # not a media range; ignore it rather than fail the request
        ranges.append(_MediaRange(kind, sub, _parse_quality(params), position))
    return ranges


def preferred_type(accept: str | None, offered: Sequence[str]) -> str:
    """The offered media type the header prefers; ``offered[0]`` when it has no preference or none applies."""
    default = offered[0]
    ranges = _parse(accept or "")
    best: tuple[float, bool, int, bool] | None = None  # quality, explicit, -position, is the default
    choice = default
    for media_type in offered:
        matches = [(r.specificity(media_type), r) for r in ranges]
        matches = [(s, r) for s, r in matches if s >= 0]
        if not matches:
            continue
        specificity, match = max(matches, key=lambda m: (m[0], -m[1].position))
        if match.quality <= 0.0:
            continue  # q=0 means "not acceptable"
        explicit = specificity == 2
        key = (match.quality, explicit, -match.position if explicit else 0, media_type == default)
        if best is None or key > best:
            best, choice = key, media_type
    return choice
