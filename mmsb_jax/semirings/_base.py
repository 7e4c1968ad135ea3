"""The :class:`Semiring` record: an algebra as a NamedTuple of pure functions.

In the style of optax's ``GradientTransformation``: a semiring is data (a record of pure,
jittable functions and static property tags), not a class hierarchy. Records are hashable,
so a semiring can be a static argument of a jitted function.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from .._errors import InvalidArgumentError
from ._carriers import dtype_kind

Array = Any


class Semiring(NamedTuple):
    """A semiring ``(S, ⊕, ⊗, 0, 1)`` as a record of pure functions, over one or more dtypes.

    The functions act on arrays of any carrier dtype (:meth:`accepts`) and dispatch on it at
    trace time; the standard records follow SuiteSparse:GraphBLAS's built-in semirings on
    bool, integer and float types (table: ``semirings.CARRIER_TABLE``).

    Attributes:
      name: short name, e.g. ``"tropical"``.
      add: elementwise ⊕ ``(a, b) -> a ⊕ b`` (broadcasting like ``jnp`` ops).
      mul: elementwise ⊗ ``(a, b) -> a ⊗ b``.
      zero: the ⊕ identity and ⊗ annihilator of the default carrier, as a Python scalar
        (``inf`` for tropical). On other dtypes use :meth:`zero_for`: a Python ``inf`` is no
        int32 value (TROPICAL's int32 zero is ``INT32_MAX``). On floating carriers the zero
        annihilates every finite value and itself; against the opposite infinity ⊗ follows
        IEEE (``0 * inf``, ``inf + -inf``: NaN), as GraphBLAS does. Page values are not
        refused for holding it; edge weights are (see ``add_dependency``).
      one: the ⊗ identity of the default carrier, as a Python scalar; see :meth:`one_for`.
      segment_reduce: ``(data, segment_ids, num_segments) -> out``: ⊕ of ``data[i]`` into
        ``out[segment_ids[i]]`` along the leading axis; ``num_segments`` is static; empty
        segments hold the zero; ids outside ``[0, num_segments)`` are dropped.
      reduce: ``(x, axis) -> ⊕`` of ``x`` along ``axis`` (the zero when that axis is empty).
      idempotent: ``a ⊕ a == a`` (min, max, or).
      commutative: ``a ⊗ b == b ⊗ a``.
      has_inverse: ⊕ has an inverse (a ring, e.g. REAL), so deltas can be subtracted.
      differentiable: ⊕ and ⊗ are smooth, so ``jax.grad`` gives true gradients (not
        subgradients).
      dtype_kind: ``"float"`` or ``"bool"``: the kind of the default carrier (what
        :meth:`zeros` makes without a dtype; float32 or bool).
      identities: ``(record, dtype) -> (zero, one)`` as scalars of that dtype, raising
        :class:`~mmsb_jax.InvalidArgumentError` with the reason when the dtype is no carrier
        (the standard records use the record's ``zero`` / ``one`` on float dtypes, so
        ``_replace(zero=...)`` changes them there). ``None`` (a user record): the floating
        dtypes for ``dtype_kind="float"`` (``zero`` and ``one`` cast), bool for ``"bool"``.
      nonnegative: the semiring is defined on values ``>= 0`` only (MAX_TIMES: ``max``
        distributes over ``*`` only there), so a negative edge weight is refused where
        weights are given (dependencies, ``compile``); traced weights are the caller's.

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> t = semirings.TROPICAL
      >>> float(t.add(jnp.float32(3.0), jnp.float32(2.0)))
      2.0
      >>> t.zero_for(np.int32), t.one_for(np.int32)
      (np.int32(2147483647), np.int32(0))
      >>> int(t.mul(jnp.int32(2**31 - 1), jnp.int32(5)))  # the integer infinity stays infinity
      2147483647
      >>> semirings.MAX_PLUS.accepts(np.uint8), semirings.REAL.accepts(np.uint8)
      (False, True)
    """

    name: str
    add: Callable[[Array, Array], Array]
    mul: Callable[[Array, Array], Array]
    zero: Any
    one: Any
    segment_reduce: Callable[[Array, Array, int], Array]
    reduce: Callable[[Array, Any], Array]
    idempotent: bool = False
    commutative: bool = True
    has_inverse: bool = False
    differentiable: bool = False
    dtype_kind: str = "float"
    identities: Callable[[Any, Any], tuple] | None = None
    nonnegative: bool = False

    # ------------------------------------------------------------------ carriers
    def zero_for(self, dtype):
        """The zero (⊕ identity, ⊗ annihilator) as a NumPy scalar of ``dtype``.

        Raises:
          InvalidArgumentError: ``dtype`` is not a carrier of this semiring (says why).
        """
        return _identities(self, np.dtype(dtype))[0]

    def one_for(self, dtype):
        """The one (⊗ identity) as a NumPy scalar of ``dtype`` (raises like :meth:`zero_for`)."""
        return _identities(self, np.dtype(dtype))[1]

    def refusal(self, dtype) -> str | None:
        """Why ``dtype`` is not a carrier of this semiring, or ``None`` when it is.

        Example:
          >>> import numpy as np
          >>> from mmsb_jax import semirings
          >>> print(semirings.MAX_PLUS.refusal(np.uint8))
          semiring 'max_plus' does not work on uint8 pages: on unsigned integers its zero (the smallest value, 0) would equal its one (0), so the zero could not annihilate ⊗
        """
        try:
            _identities(self, np.dtype(dtype))
        except InvalidArgumentError as err:
            return str(err)
        except TypeError as err:  # not a dtype at all
            return f"semiring {self.name!r}: {err}"
        return None

    def accepts(self, dtype) -> bool:
        """Whether arrays of ``dtype`` are valid carriers for this semiring."""
        return self.refusal(dtype) is None

    # ------------------------------------------------------------------ arrays
    def zeros(self, shape, dtype=None) -> Array:
        """An array filled with the semiring's zero (default dtype: float32, or bool)."""
        dt = self._dtype(dtype)
        return jnp.full(shape, self.zero_for(dt), dtype=dt)

    def ones(self, shape, dtype=None) -> Array:
        """An array filled with the semiring's one."""
        dt = self._dtype(dtype)
        return jnp.full(shape, self.one_for(dt), dtype=dt)

    def zero_like(self, x: Array) -> Array:
        dt = jnp.result_type(x)
        return jnp.full(jnp.shape(x), self.zero_for(dt), dtype=dt)

    def one_like(self, x: Array) -> Array:
        dt = jnp.result_type(x)
        return jnp.full(jnp.shape(x), self.one_for(dt), dtype=dt)

    def _dtype(self, dtype):
        if dtype is not None:
            return np.dtype(dtype)
        return np.dtype(np.bool_) if self.dtype_kind == "bool" else np.dtype(np.float32)


def default_identities(semiring: Semiring, dtype: np.dtype) -> tuple:
    """``identities`` of a record without its own: its ``zero``/``one`` on its kind of dtype."""
    kind = dtype_kind(dtype)
    want = "bool" if semiring.dtype_kind == "bool" else "float"
    if kind != want:
        raise InvalidArgumentError(
            f"semiring {semiring.name!r} does not work on {dtype} pages: it is defined on "
            f"{want} pages (give the record an `identities` function for other dtypes)"
        )
    return dtype.type(semiring.zero), dtype.type(semiring.one)


@functools.lru_cache(maxsize=4096)
def _identities_cached(semiring: Semiring, dtype: np.dtype) -> tuple:
    return _identities_uncached(semiring, dtype)


def _identities_uncached(semiring: Semiring, dtype: np.dtype) -> tuple:
    fn = semiring.identities
    zero, one = (fn or default_identities)(semiring, dtype)
    return np.asarray(zero, dtype)[()], np.asarray(one, dtype)[()]


def _identities(semiring: Semiring, dtype: np.dtype) -> tuple:
    dtype_kind(dtype)  # a TypeError for a non-page dtype (complex, object, ...)
    try:
        return _identities_cached(semiring, dtype)
    except TypeError as err:  # an unhashable record: no cache
        if "unhashable" not in str(err):
            raise
        return _identities_uncached(semiring, dtype)
