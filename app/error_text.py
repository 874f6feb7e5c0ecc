"""How a caught exception is named in a one-line message; no imports, so the command-line client can use it."""
from __future__ import annotations

__all__ = ["error_text"]


def error_text(exc: BaseException) -> str:
    """The error's message, or its type when it has none (an exception is truthy even without text)."""
    return str(exc) or type(exc).__name__
