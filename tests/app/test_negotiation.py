"""Accept-header negotiation between the JSON answer (default) and the PNG one."""
from __future__ import annotations

import pytest

from app.negotiation import preferred_type

OFFERED = ("application/json", "image/png")


@pytest.mark.parametrize("accept, expected", [
    (None, "application/json"),
    ("", "application/json"),
    ("*/*", "application/json"),  # curl's default: no preference, so the default
    ("image/png", "image/png"),
    ("image/*", "image/png"),
    ("image/png, application/json", "image/png"),  # equal quality: the one named first
    ("application/json, image/png", "application/json"),
    ("image/png;q=0.5, application/json", "application/json"),
    ("application/json;q=0.2, image/png;q=0.9", "image/png"),
    ("image/png;q=0, */*", "application/json"),  # q=0: not acceptable, whatever the wildcard says
    ("image/png, */*;q=0.1", "image/png"),
    ("image/*;q=0.3, application/*;q=0.2", "image/png"),
    ("text/html, application/xhtml+xml", "application/json"),  # nothing offered: answer with the default
    ("IMAGE/PNG", "image/png"),  # media types are case-insensitive
    ("image/png; q=0.8 , application/json ; q=0.9", "application/json"),  # whitespace around parameters
    ("image/png;q=abc", "image/png"),  # a malformed q counts as absent
    ("garbage, ,;;", "application/json"),
])
def test_preferred_type(accept: str | None, expected: str) -> None:
    assert preferred_type(accept, OFFERED) == expected


def test_the_most_specific_range_sets_the_quality() -> None:
    # image/png is excluded explicitly even though image/* would accept it
    assert preferred_type("image/*, image/png;q=0", OFFERED) == "application/json"
    assert preferred_type("image/*;q=0, image/png", OFFERED) == "image/png"
