"""The standard semirings: REAL, TROPICAL, MAX_PLUS, BOOLEAN, LOG, MAX_TIMES, soft_tropical.

Each record's functions dispatch on the carrier dtype at trace time (see
``semirings.CARRIER_TABLE``): on bool pages REAL and MAX_TIMES are LOR_LAND and TROPICAL is
LAND_LOR; on integers + and * wrap and TROPICAL / MAX_PLUS keep their infinity under ⊗.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InvalidArgumentError
from ._base import Semiring
from ._carriers import dtype_kind, highest, lowest

_INF = float("inf")


def _kind(*xs) -> str:
    return dtype_kind(jnp.result_type(*xs))


def _refuse(name: str, dtype, why: str):
    raise InvalidArgumentError(f"semiring {name!r} does not work on {dtype} pages: {why}")


# --------------------------------------------------------------------------- identities
# ``identities(semiring, dtype) -> (zero, one)``: on floats the record's own ``zero`` / ``one``
# (so ``_replace(zero=...)`` changes them), on bool and integers the carrier table's.
def _floats(sr, dt):
    return dt.type(sr.zero), dt.type(sr.one)


def _real_ids(sr, dt):
    kind = dtype_kind(dt)
    if kind == "float":
        return _floats(sr, dt)
    return (np.bool_(False), np.bool_(True)) if kind == "bool" else (dt.type(0), dt.type(1))


def _tropical_ids(sr, dt):
    kind = dtype_kind(dt)
    if kind == "float":
        return _floats(sr, dt)
    if kind == "bool":  # LAND_LOR: True is "unreachable", False "reachable at cost 0"
        return np.bool_(True), np.bool_(False)
    return highest(dt), dt.type(0)


def _max_plus_ids(sr, dt):
    kind = dtype_kind(dt)
    if kind == "bool":
        _refuse(sr.name, dt, "on bool it is LOR_LOR, whose zero (False) is also its one and does not annihilate ⊗")
    if kind == "unsigned":
        _refuse(
            sr.name, dt,
            "on unsigned integers its zero (the smallest value, 0) would equal its one (0), so the zero "
            "could not annihilate ⊗",
        )
    return _floats(sr, dt) if kind == "float" else (lowest(dt), dt.type(0))


def _boolean_ids(sr, dt):
    if dt != np.bool_:
        _refuse(sr.name, dt, "its carrier is {False, True}: use bool pages (on 0/1 numeric pages MAX_TIMES is LOR_LAND)")
    return np.bool_(sr.zero), np.bool_(sr.one)


def _float_ids(sr, dt):
    if dtype_kind(dt) != "float":
        _refuse(sr.name, dt, "it needs exp and log: float pages only")
    return _floats(sr, dt)


# --------------------------------------------------------------------------- elementwise
def _or_else(bool_op, num_op):
    def op(a, b):
        return bool_op(a, b) if _kind(a, b) == "bool" else num_op(a, b)

    return op


def _plus_keeping(zero_of):
    """``+`` for (min|max, +) semirings: floats add (``±inf`` absorbs); integers wrap, but a
    zero (the integer infinity) on either side gives the zero."""

    def mul(a, b):
        kind = _kind(a, b)
        if kind == "float":
            return jnp.add(a, b)
        if kind == "bool":
            return jnp.logical_or(a, b)
        a, b = jnp.asarray(a), jnp.asarray(b)
        z = zero_of(jnp.result_type(a, b))
        return jnp.where((a == z) | (b == z), z, a + b)

    return mul


# --------------------------------------------------------------------------- reductions
def _segment_count(data, segment_ids, num_segments):
    return jax.ops.segment_sum(data.astype(jnp.int32), segment_ids, num_segments=num_segments)


def _segment_any(data, segment_ids, num_segments):
    return _segment_count(data, segment_ids, num_segments) > 0


def _segment_all(data, segment_ids, num_segments):
    return _segment_count(~data, segment_ids, num_segments) == 0


def _segment_sum(data, segment_ids, num_segments):
    if data.dtype == jnp.bool_:
        return _segment_any(data, segment_ids, num_segments)
    return jax.ops.segment_sum(data, segment_ids, num_segments=num_segments)


def _segment_min(data, segment_ids, num_segments):
    if data.dtype == jnp.bool_:
        return _segment_all(data, segment_ids, num_segments)
    return jax.ops.segment_min(data, segment_ids, num_segments=num_segments)  # empty: the dtype's max


def _segment_max(data, segment_ids, num_segments):
    return jax.ops.segment_max(data, segment_ids, num_segments=num_segments)  # empty: the dtype's min


def _segment_max_nonneg(data, segment_ids, num_segments):
    if data.dtype == jnp.bool_:
        return _segment_any(data, segment_ids, num_segments)
    # Empty segments of segment_max hold the dtype's min; the zero of MAX_TIMES is 0.
    out = jax.ops.segment_max(data, segment_ids, num_segments=num_segments)
    return jnp.maximum(out, jnp.zeros((), data.dtype))


def _sum(x, axis):
    x = jnp.asarray(x)
    kind = dtype_kind(x.dtype)
    if kind == "bool":
        return jnp.any(x, axis=axis)
    if kind == "float":
        return jnp.sum(x, axis=axis)
    return jnp.sum(x, axis=axis, dtype=x.dtype)  # wraps like the elementwise +


def _min(x, axis):
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        return jnp.all(x, axis=axis)
    return jnp.min(x, axis=axis, initial=highest(x.dtype))


def _max(x, axis):
    x = jnp.asarray(x)
    return jnp.max(x, axis=axis, initial=lowest(x.dtype))


def _max_nonneg(x, axis):
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        return jnp.any(x, axis=axis)
    return jnp.max(x, axis=axis, initial=x.dtype.type(0))


def _segment_logsumexp(data, segment_ids, num_segments):
    """logsumexp per segment; -inf for empty or all -inf segments, finite gradients."""
    if num_segments == 0:  # nothing to gather the per-segment shift from
        return jnp.zeros((0,) + tuple(jnp.shape(data)[1:]), jnp.result_type(data))
    m = jax.lax.stop_gradient(jax.ops.segment_max(data, segment_ids, num_segments=num_segments))
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), data.dtype))
    shift = m[jnp.clip(segment_ids, 0, num_segments - 1)]
    s = jax.ops.segment_sum(jnp.exp(data - shift), segment_ids, num_segments=num_segments)
    ok = ~(s <= 0)  # a NaN sum stays NaN (NaN in, NaN out), as in jnp.logaddexp
    s_safe = jnp.where(ok, s, jnp.ones((), s.dtype))
    return jnp.where(ok, jnp.log(s_safe) + m, jnp.full((), -_INF, data.dtype))


def _logsumexp(x, axis):
    x = jnp.asarray(x)
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True, initial=-_INF))
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), x.dtype))
    s = jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True)
    ok = ~(s <= 0)  # a NaN sum stays NaN (NaN in, NaN out), as in jnp.logaddexp
    s_safe = jnp.where(ok, s, jnp.ones((), s.dtype))
    out = jnp.where(ok, jnp.log(s_safe) + m, jnp.full((), -_INF, x.dtype))
    return jnp.squeeze(out, axis=axis)


def _logaddexp(a, b):
    """logaddexp with a zero gradient (not NaN) when both inputs are -inf."""
    m = jax.lax.stop_gradient(jnp.maximum(a, b))
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
    s = jnp.exp(a - m) + jnp.exp(b - m)
    ok = ~(s <= 0)  # a NaN sum stays NaN (NaN in, NaN out), as in jnp.logaddexp
    s_safe = jnp.where(ok, s, jnp.ones_like(s))
    return jnp.where(ok, jnp.log(s_safe) + m, jnp.full_like(s, -_INF))


# --------------------------------------------------------------------------- records
REAL = Semiring(
    name="real",
    add=_or_else(jnp.logical_or, jnp.add),
    mul=_or_else(jnp.logical_and, jnp.multiply),
    zero=0.0,
    one=1.0,
    segment_reduce=_segment_sum,
    reduce=_sum,
    idempotent=False,
    has_inverse=True,
    differentiable=True,
    identities=_real_ids,
)

TROPICAL = Semiring(
    name="tropical",
    add=_or_else(jnp.logical_and, jnp.minimum),
    mul=_plus_keeping(highest),
    zero=_INF,
    one=0.0,
    segment_reduce=_segment_min,
    reduce=_min,
    idempotent=True,
    identities=_tropical_ids,
)

MAX_PLUS = Semiring(
    name="max_plus",
    add=jnp.maximum,
    mul=_plus_keeping(lowest),
    zero=-_INF,
    one=0.0,
    segment_reduce=_segment_max,
    reduce=_max,
    idempotent=True,
    identities=_max_plus_ids,
)

BOOLEAN = Semiring(
    name="boolean",
    add=jnp.logical_or,
    mul=jnp.logical_and,
    zero=False,
    one=True,
    segment_reduce=_segment_any,
    reduce=lambda x, axis: jnp.any(x, axis=axis),
    idempotent=True,
    dtype_kind="bool",
    identities=_boolean_ids,
)

LOG = Semiring(
    name="log",
    add=_logaddexp,
    mul=jnp.add,
    zero=-_INF,
    one=0.0,
    segment_reduce=_segment_logsumexp,
    reduce=_logsumexp,
    differentiable=True,
    identities=_float_ids,
)

MAX_TIMES = Semiring(
    name="max_times",
    add=_or_else(jnp.logical_or, jnp.maximum),
    mul=_or_else(jnp.logical_and, jnp.multiply),
    zero=0.0,
    one=1.0,
    segment_reduce=_segment_max_nonneg,
    reduce=_max_nonneg,
    idempotent=True,
    identities=_real_ids,
    nonnegative=True,
)


_F32_TINY = float(np.finfo(np.float32).tiny)  # 1.1754944e-38


def soft_tropical(temperature: float) -> Semiring:
    """A smooth (min, +) semiring: ``a ⊕ b = -T·log(exp(-a/T) + exp(-b/T))`` (float pages).

    Tends to :data:`TROPICAL` as ``temperature -> 0`` (``min(a, b) - T·log 2 <= a ⊕ b <=
    min(a, b)``) and has useful gradients: ``∂(a ⊕ b)/∂a`` is the softmin weight of ``a``.
    Zero is ``inf``, one is ``0``. Not idempotent (``a ⊕ a = a - T·log 2``).

    Records are cached per temperature (as a Python float), so equal temperatures give the
    same, hashable record, usable as a static argument of ``jax.jit``; its name,
    ``"soft_tropical(T)"``, is understood by :func:`get_semiring`.

    Args:
      temperature: ``T``, a finite number, at least float32's smallest normal number
        (``1.1754944e-38``; below it ``T`` itself is lost in float32 arithmetic and every sum
        is NaN) (static: not a traced value). Values ``x`` with ``|x| / T`` past float32's
        range (``3.4e38``) saturate: keep ``T`` within a few orders of magnitude of the
        differences that matter.

    Raises:
      InvalidArgumentError: ``temperature`` is not a finite number of at least
        ``1.1754944e-38``.

    Example:
      >>> from mmsb_jax import semirings
      >>> st = semirings.soft_tropical(0.01)
      >>> round(float(st.add(1.0, 2.0)), 3)
      1.0
      >>> semirings.soft_tropical(0.01) is st
      True
    """
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = float("nan")
    if not _F32_TINY <= t < _INF:
        raise InvalidArgumentError(
            f"soft_tropical needs a finite temperature of at least {_F32_TINY:.8g} (float32's smallest "
            f"normal number), got temperature={temperature!r}"
        )
    return _soft_tropical(t)


@functools.cache
def _soft_tropical(t: float) -> Semiring:
    def add(a, b):
        return -t * _logaddexp(-jnp.asarray(a) / t, -jnp.asarray(b) / t)

    def seg(data, segment_ids, num_segments):
        return -t * _segment_logsumexp(-jnp.asarray(data) / t, segment_ids, num_segments)

    def red(x, axis):
        return -t * _logsumexp(-jnp.asarray(x) / t, axis)

    short = f"{t:g}"
    name = f"soft_tropical({short if float(short) == t else repr(t)})"  # names round-trip
    return Semiring(
        name=name,
        add=add,
        mul=jnp.add,
        zero=_INF,
        one=0.0,
        segment_reduce=seg,
        reduce=red,
        differentiable=True,
        identities=_float_ids,
    )


STANDARD = (REAL, TROPICAL, MAX_PLUS, BOOLEAN, LOG, MAX_TIMES)

_BY_NAME = {s.name: s for s in STANDARD}


_SOFT_TROPICAL_NAME = re.compile(r"soft_tropical\(\s*([^()\s]+)\s*\)")


def get_semiring(semiring) -> Semiring:
    """A :class:`Semiring` from a record or a name.

    Names are the standard ones (``"real"``, ``"tropical"``, ``"max_plus"``, ``"boolean"``,
    ``"log"``, ``"max_times"``, any case) and ``"soft_tropical(T)"`` (the ``name`` of a
    :func:`soft_tropical` record). A record is returned as is.

    Raises:
      InvalidArgumentError: an unknown name, or neither a name nor a record.

    Example:
      >>> from mmsb_jax import semirings
      >>> semirings.get_semiring("Tropical") is semirings.TROPICAL
      True
      >>> semirings.get_semiring("soft_tropical(0.5)") is semirings.soft_tropical(0.5)
      True
    """
    if isinstance(semiring, Semiring):
        return semiring
    if isinstance(semiring, str) and semiring.lower() in _BY_NAME:
        return _BY_NAME[semiring.lower()]
    if isinstance(semiring, str):
        match = _SOFT_TROPICAL_NAME.fullmatch(semiring.strip().lower())
        if match:
            try:
                return soft_tropical(float(match.group(1)))
            except ValueError:
                pass
    raise InvalidArgumentError(
        f"unknown semiring {semiring!r}; expected a Semiring record, one of {sorted(_BY_NAME)} "
        "or 'soft_tropical(T)'"
    )
