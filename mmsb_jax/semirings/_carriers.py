"""Carrier dtypes: the semirings' zero and one on every dtype, and the weight rule.

Pages come in every dtype (uint8 by default), so a semiring is defined per carrier dtype, the
way SuiteSparse:GraphBLAS defines its built-in semirings over every integer and boolean type
(user guide, "GraphBLAS semirings"): integer arithmetic wraps modulo ``2**bits``; the ``MIN``
monoid's identity is the type's largest value, ``MAX``'s the smallest; on ``BOOL``, ``PLUS``
and ``MAX`` are ``LOR`` and ``TIMES`` and ``MIN`` are ``LAND``. :data:`CARRIER_TABLE` states
what each standard semiring is on each kind of dtype and where this package chose differently.

The weight rule (:func:`weights_to_carrier` on the host, :func:`cast_weights` under ``jit``)
turns an edge weight (a Python float, as the graph builder stores it) into a page value:

* bool pages: a weight is the semiring's one unless it equals the semiring's zero (for REAL,
  BOOLEAN and MAX_TIMES: ``w != 0``; for TROPICAL: ``w != inf``);
* integer pages: a weight equal to the semiring's zero (``±inf`` for TROPICAL / MAX_PLUS)
  becomes the dtype's zero (e.g. ``INT32_MAX``); any other weight must be integral and
  representable in the dtype;
* float pages: the weight rounded to the page dtype;
* MAX_TIMES (``Semiring.nonnegative``), any dtype: a negative weight is refused where weights
  are given (the semiring is defined on values >= 0), not mapped.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

#: Every dtype a page may have, in the order used by per-dtype tables.
CARRIER_DTYPES = tuple(
    np.dtype(d)
    for d in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        jnp.bfloat16,
        np.float32,
        np.float64,
    )
)

#: Dtypes for which a weight may not fit (bool always fits; so do float16/bfloat16/float32, by
#: rounding); float64 is here because weights stored in float32 would be rounded through it.
CHECKED_DTYPES = tuple(d for d in CARRIER_DTYPES if d.kind in "biu") + (np.dtype(np.float64),)

CARRIER_TABLE = """\
semiring    bool               signed int             unsigned int          float
REAL        LOR_LAND (F, T)    PLUS_TIMES (0, 1)      PLUS_TIMES (0, 1)     (0, 1)
TROPICAL    LAND_LOR (T, F)    MIN_PLUS (MAX, 0)      MIN_PLUS (MAX, 0)     (inf, 0)
MAX_PLUS    refused            MAX_PLUS (MIN, 0)      refused               (-inf, 0)
MAX_TIMES   LOR_LAND (F, T)    MAX_TIMES (0, 1)       MAX_TIMES (0, 1)      (0, 1)
BOOLEAN     LOR_LAND (F, T)    refused                refused               refused
LOG         refused            refused                refused               (-inf, 0)
soft_trop.  refused            refused                refused               (inf, 0)
(zero, one) in brackets; integer + and * wrap modulo 2**bits.

Where this differs from GraphBLAS, and why:
* MIN_PLUS / MAX_PLUS on integers: ⊗ is + that keeps the infinity (a ⊗ b is the zero when
  either is). GraphBLAS never multiplies by an implicit zero (it is not stored), so its plain
  wrapping + is enough there; dense pages need the zero to annihilate, or INT32_MAX + 1 would
  wrap to INT32_MIN and win every min.
* MAX_TIMES: the zero is 0 (GraphBLAS's MAX monoid has INT_MIN / -inf), so that it annihilates
  ⊗; the semiring is defined on values >= 0, as on floats (negative edge weights are refused).
* MAX_PLUS on unsigned integers and on bool (LOR_LOR) is refused: its zero (the smallest
  value) would equal its one (0), so the zero could not annihilate ⊗.
* BOOLEAN is refused on numeric pages: its carrier is {False, True} (GraphBLAS's LOR / LAND
  monoids are boolean-only too); on 0/1 numeric pages use MAX_TIMES, which is LOR_LAND there.
* LOG and soft_tropical need exp / log: float pages only.

Wrap-around caveat: on integers the min/max-plus and max-times laws hold only where no sum or
product overflows (e.g. with int8, 100 ⊗ (27 ⊕ c) and (100 ⊗ 27) ⊕ (100 ⊗ c) differ when
100 + 27 lands on the zero 127); propagation then computes exactly what the wrapping
arithmetic says, edge by edge.
"""


def dtype_kind(dtype) -> str:
    """``"bool"``, ``"signed"``, ``"unsigned"`` or ``"float"`` (raises for anything else)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return "bool"
    if dt.kind == "i":
        return "signed"
    if dt.kind == "u":
        return "unsigned"
    if jnp.issubdtype(dt, jnp.floating):
        return "float"
    raise TypeError(f"{dt} is not a page dtype")


def lowest(dtype):
    """The smallest value of ``dtype`` (``-inf`` for floats, ``False`` for bool)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return np.bool_(False)
    if dt.kind in "iu":
        return dt.type(np.iinfo(dt).min)
    return dt.type(-np.inf)


def highest(dtype):
    """The largest value of ``dtype`` (``inf`` for floats, ``True`` for bool)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return np.bool_(True)
    if dt.kind in "iu":
        return dt.type(np.iinfo(dt).max)
    return dt.type(np.inf)


def _fits_integer(w: np.ndarray, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    with np.errstate(invalid="ignore"):
        return np.isfinite(w) & (np.floor(w) == w) & (w >= float(info.min)) & (w <= float(info.max))


def weights_to_carrier(semiring, weights, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Host-side weight rule: float64 ``weights`` as values of ``dtype`` pages.

    Args:
      semiring: the :class:`~mmsb_jax.semirings.Semiring` (its float ``zero`` maps to the
        dtype's zero).
      weights: array-like of float weights (NaN is not allowed).
      dtype: a carrier dtype of ``semiring``.

    Returns:
      ``(values, bad)``: the weights as a NumPy array of ``dtype`` and a bool mask of the
      weights that do not fit (integer pages: neither the zero nor an integral value in range;
      entries of ``values`` there are unspecified).
    """
    dt = np.dtype(dtype)
    w = np.asarray(weights, dtype=np.float64)
    zero_f, zero, one = float(semiring.zero), semiring.zero_for(dt), semiring.one_for(dt)
    is_zero = w == zero_f
    kind = dtype_kind(dt)
    if kind == "bool":
        return np.where(is_zero, zero, one).astype(dt), np.zeros(w.shape, bool)
    if kind == "float":
        return w.astype(dt), np.zeros(w.shape, bool)
    ok = _fits_integer(w, dt)
    vals = np.where(is_zero, zero, np.where(ok, w, 0.0).astype(dt)).astype(dt)
    return vals, ~(ok | is_zero)


def _equals_zero(semiring, w):
    """Where ``w`` equals the semiring's zero: its float ``zero`` for float weights, the
    dtype's zero (:meth:`~mmsb_jax.semirings.Semiring.zero_for`) for bool / integer weights."""
    if jnp.issubdtype(w.dtype, jnp.floating):
        return w == jnp.asarray(float(semiring.zero), w.dtype)
    if semiring.accepts(w.dtype):
        return w == semiring.zero_for(w.dtype)
    return jnp.zeros(w.shape, bool)


def cast_weights(semiring, w, dtype):
    """The weight rule under ``jit``: ``w`` (any dtype) as values of ``dtype`` pages.

    A no-op when ``w`` already has ``dtype``. Bool weights are the one (True) or the zero
    (False). Float weights become integers by ``astype`` (toward zero: the caller checks
    representability where the values are known), except the semiring's zero, which becomes
    the dtype's zero.
    """
    dt = np.dtype(dtype)
    w = jnp.asarray(w)
    if w.dtype == dt:
        return w
    zero, one = semiring.zero_for(dt), semiring.one_for(dt)
    kind = dtype_kind(dt)
    if kind == "float" and w.dtype != jnp.bool_:
        return w.astype(dt)
    is_zero = _equals_zero(semiring, w)
    if kind == "bool" or w.dtype == jnp.bool_:
        return jnp.where(is_zero, zero, one)
    if jnp.issubdtype(w.dtype, jnp.floating):
        w = jnp.where(jnp.isfinite(w), w, jnp.zeros((), w.dtype))
    return jnp.where(is_zero, zero, w.astype(dt))


def first_negative(semiring, weights) -> int:
    """The position of the first negative weight (NaN: the semiring's one, never negative) for
    a semiring defined on values ``>= 0`` (``semiring.nonnegative``), else ``-1``.

    Example:
      >>> from mmsb_jax.semirings import MAX_TIMES, REAL
      >>> first_negative(MAX_TIMES, [0.5, float("nan"), -2.0]), first_negative(REAL, [-2.0])
      (2, -1)
    """
    if not semiring.nonnegative:
        return -1
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(np.asarray(weights, dtype=np.float64) < 0)
    return int(bad[0]) if bad.size else -1


def first_misfit(semiring, weights) -> np.ndarray:
    """Per :data:`CHECKED_DTYPES` entry: the position of the first weight that does not fit
    that dtype's pages (``-1`` when all fit, or when the semiring refuses the dtype)."""
    w = np.asarray(weights, dtype=np.float64)
    out = np.full(len(CHECKED_DTYPES), -1, np.int32)
    for i, dt in enumerate(CHECKED_DTYPES):
        if dt.kind == "f" or not semiring.accepts(dt):
            continue
        bad = np.flatnonzero(weights_to_carrier(semiring, w, dt)[1])
        if bad.size:
            out[i] = bad[0]
    return out
