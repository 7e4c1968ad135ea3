"""Small argument checks shared by every layer."""

from __future__ import annotations

import numpy as np


def is_int(x) -> bool:
    """Whether ``x`` is a Python or NumPy integer and not a bool (``True == 1``, but it is no size or id)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
