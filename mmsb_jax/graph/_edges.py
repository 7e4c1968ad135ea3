"""The edge columns of a :class:`~mmsb_jax.graph.ShadowPageGraph` and the checks of what goes
into them: node ids, edge types, weights."""

from __future__ import annotations

import numpy as np

from .._errors import InvalidArgumentError

EDGE_TYPES = ("data", "control", "gpu_sync", "compiler", "derive")
_TYPE_CODE = {t: i for i, t in enumerate(EDGE_TYPES)}
DATA, DERIVE = _TYPE_CODE["data"], _TYPE_CODE["derive"]
_MAX_ID = 2**31 - 1
# the per-edge columns (growable numpy arrays, one slot per edge ever added; see _alive)
_COLUMNS = ("_src", "_dst", "_w", "_wdef", "_type", "_alive")
_COLUMN_DTYPES = (np.int64, np.int64, np.float64, bool, np.uint8, bool)


def _check_id(x, what: str) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise InvalidArgumentError(f"{what} must be an int node id, got {what}={x!r}")
    x = int(x)
    if not 0 <= x <= _MAX_ID:
        raise InvalidArgumentError(f"{what} must be in [0, 2**31), got {what}={x}")
    return x


def _type_code(edge_type: str) -> int:
    if edge_type not in _TYPE_CODE or edge_type == "derive":
        raise InvalidArgumentError(
            f"unknown edge_type={edge_type!r}; expected one of {list(EDGE_TYPES[:4])}"
        )
    return _TYPE_CODE[edge_type]


def _weight_value(weight) -> tuple[float, bool]:
    """(stored value, is_default). ``None`` means the semiring's one, resolved at compile."""
    if weight is None:
        return np.nan, True
    try:
        w = float(np.asarray(weight).item())
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"weight must be a scalar or None, got weight={weight!r}") from e
    if np.isnan(w):
        raise InvalidArgumentError(f"weight must not be NaN, got weight={weight!r}")
    return w, False
