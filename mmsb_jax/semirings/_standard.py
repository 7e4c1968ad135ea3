"""The standard semirings: REAL, TROPICAL, MAX_PLUS, BOOLEAN, LOG, MAX_TIMES, soft_tropical."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp

from ._base import Semiring

_INF = float("inf")


# --------------------------------------------------------------------------- reductions
def _segment_sum(data, segment_ids, num_segments):
    return jax.ops.segment_sum(data, segment_ids, num_segments=num_segments)


def _segment_min(data, segment_ids, num_segments):
    return jax.ops.segment_min(data, segment_ids, num_segments=num_segments)


def _segment_max(data, segment_ids, num_segments):
    return jax.ops.segment_max(data, segment_ids, num_segments=num_segments)


def _segment_or(data, segment_ids, num_segments):
    counts = jax.ops.segment_sum(data.astype(jnp.int32), segment_ids, num_segments=num_segments)
    return counts > 0


def _segment_max_nonneg(data, segment_ids, num_segments):
    # Empty segments of segment_max hold -inf; the zero of MAX_TIMES is 0.
    out = jax.ops.segment_max(data, segment_ids, num_segments=num_segments)
    return jnp.maximum(out, jnp.zeros((), data.dtype))


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
    add=jnp.add,
    mul=jnp.multiply,
    zero=0.0,
    one=1.0,
    segment_reduce=_segment_sum,
    reduce=lambda x, axis: jnp.sum(x, axis=axis),
    idempotent=False,
    has_inverse=True,
    differentiable=True,
)

TROPICAL = Semiring(
    name="tropical",
    add=jnp.minimum,
    mul=jnp.add,
    zero=_INF,
    one=0.0,
    segment_reduce=_segment_min,
    reduce=lambda x, axis: jnp.min(x, axis=axis, initial=_INF),
    idempotent=True,
)

MAX_PLUS = Semiring(
    name="max_plus",
    add=jnp.maximum,
    mul=jnp.add,
    zero=-_INF,
    one=0.0,
    segment_reduce=_segment_max,
    reduce=lambda x, axis: jnp.max(x, axis=axis, initial=-_INF),
    idempotent=True,
)

BOOLEAN = Semiring(
    name="boolean",
    add=jnp.logical_or,
    mul=jnp.logical_and,
    zero=False,
    one=True,
    segment_reduce=_segment_or,
    reduce=lambda x, axis: jnp.any(x, axis=axis),
    idempotent=True,
    dtype_kind="bool",
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
)

MAX_TIMES = Semiring(
    name="max_times",
    add=jnp.maximum,
    mul=jnp.multiply,
    zero=0.0,
    one=1.0,
    segment_reduce=_segment_max_nonneg,
    reduce=lambda x, axis: jnp.max(x, axis=axis, initial=0.0),
    idempotent=True,
)


def soft_tropical(temperature: float) -> Semiring:
    """A smooth (min, +) semiring: ``a ⊕ b = -T·log(exp(-a/T) + exp(-b/T))``.

    Tends to :data:`TROPICAL` as ``temperature -> 0`` (``min(a, b) - T·log 2 <= a ⊕ b <=
    min(a, b)``) and has useful gradients: ``∂(a ⊕ b)/∂a`` is the softmin weight of ``a``.
    Zero is ``inf``, one is ``0``. Not idempotent (``a ⊕ a = a - T·log 2``).

    Records are cached per temperature (as a Python float), so equal temperatures give the
    same, hashable record, usable as a static argument of ``jax.jit``; its name,
    ``"soft_tropical(T)"``, is understood by :func:`get_semiring`.

    Args:
      temperature: ``T``, a finite number ``> 0`` (static: not a traced value).

    Raises:
      InvalidArgumentError: ``temperature`` is not a finite number ``> 0``.

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
    if not 0.0 < t < _INF:
        from .._errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"soft_tropical needs a finite temperature > 0, got temperature={temperature!r}"
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
    return Semiring(
        name=f"soft_tropical({short if float(short) == t else repr(t)})",  # names round-trip
        add=add,
        mul=jnp.add,
        zero=_INF,
        one=0.0,
        segment_reduce=seg,
        reduce=red,
        differentiable=True,
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
    from .._errors import InvalidArgumentError

    raise InvalidArgumentError(
        f"unknown semiring {semiring!r}; expected a Semiring record, one of {sorted(_BY_NAME)} "
        "or 'soft_tropical(T)'"
    )
