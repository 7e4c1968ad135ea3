"""Small argument checks shared by every layer."""

from __future__ import annotations

import os

import numpy as np


def is_int(x) -> bool:
    """Whether ``x`` is a Python or NumPy integer and not a bool (``True == 1``, but it is no size or id)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def existing_part(path: str) -> str:
    """The deepest part of ``path`` that exists (``path`` itself when it exists): where a
    directory to be made would start, and what to name when it is a file, not a directory."""
    part = os.path.abspath(path)
    while not os.path.lexists(part):
        part = os.path.dirname(part)
    return part


def not_a_directory(path: str) -> str | None:
    """Why ``path`` cannot be (or become) a directory because a file is in the way, as words
    to follow the path in a message, or ``None`` when nothing is in the way."""
    part = existing_part(path)
    if os.path.isdir(part):
        return None
    return "exists and is not a directory" if part == os.path.abspath(path) else f"is below {part!r}, which is not a directory"
