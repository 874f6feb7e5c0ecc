"""Refuse multipart fields an endpoint does not declare, instead of ignoring them.

FastAPI reads the fields it knows and drops the rest, so ``-F mask=@truth.png`` (for ``ground_truth``) answered
200 with ``"dice": null`` and nothing to say why. A misspelt field is a client's mistake worth a 422 that names
it and the field it probably meant, in the shape FastAPI gives every field error (pydantic's ``extra_forbidden``).
"""
from __future__ import annotations

import difflib
import typing
from collections.abc import Callable
from typing import Any

from fastapi import Request, params
from fastapi.exceptions import RequestValidationError

__all__ = ["declared_form_fields", "reject_unknown_form_fields"]

# Names people reach for, mapped to the field that does that job; difflib catches misspellings of the real names.
_LIKELY_MEANT = {
    "mask": "ground_truth", "truth": "ground_truth", "gt": "ground_truth", "trimap": "ground_truth",
    "label": "ground_truth", "target": "ground_truth", "file": "image", "photo": "image", "img": "image",
    "image_file": "image", "url": "image_url", "bg": "background", "bg_color": "background",
    "bg_image": "background_image", "margin": "crop_margin",
}
_FORM_CONTENT_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def declared_form_fields(endpoint: Callable[..., Any]) -> frozenset[str]:
    """The form and file fields ``endpoint`` declares with ``Annotated[..., Form()/File()]`` (aliases honoured)."""
    names = set()
    for name, hint in typing.get_type_hints(endpoint, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, params.Form):  # File is a Form
                names.add(meta.alias or name)
    return frozenset(names)


async def reject_unknown_form_fields(request: Request, declared: frozenset[str]) -> None:
    """422 with one ``extra_forbidden`` error per field of the form that ``declared`` lacks, naming the field it
    probably meant and every field the endpoint takes."""
    if not request.headers.get("content-type", "").startswith(_FORM_CONTENT_TYPES):
        return
    unknown = sorted(set((await request.form()).keys()) - declared)  # Starlette caches the parsed form
    if unknown:
        takes = ", ".join(sorted(declared))
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("body", name), "input": None,
                                       "msg": f"unknown field{_likely_meant(name, declared)}; this endpoint takes "
                                              f"{takes}"} for name in unknown])


def _likely_meant(name: str, declared: frozenset[str]) -> str:
    meant = _LIKELY_MEANT.get(name.lower())
    if meant not in declared:
        close = difflib.get_close_matches(name.lower(), sorted(declared), n=1, cutoff=0.6)
        meant = close[0] if close else None
    return f" (did you mean {meant}?)" if meant else ""
