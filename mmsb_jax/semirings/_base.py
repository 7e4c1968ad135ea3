"""The :class:`Semiring` record: an algebra as a NamedTuple of pure functions.

In the style of optax's ``GradientTransformation``: a semiring is data (a record of pure,
jittable functions and static property tags), not a class hierarchy. Records are hashable,
so a semiring can be a static argument of a jitted function.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

Array = Any


class Semiring(NamedTuple):
    """A semiring ``(S, ⊕, ⊗, 0, 1)`` as a record of pure functions.

    Attributes:
      name: short name, e.g. ``"tropical"``.
      add: elementwise ⊕ ``(a, b) -> a ⊕ b`` (broadcasting like ``jnp`` ops).
      mul: elementwise ⊗ ``(a, b) -> a ⊗ b``.
      zero: the ⊕ identity and ⊗ annihilator, as a Python scalar (``inf`` for tropical).
      one: the ⊗ identity, as a Python scalar.
      segment_reduce: ``(data, segment_ids, num_segments) -> out``: ⊕ of ``data[i]`` into
        ``out[segment_ids[i]]`` along the leading axis; ``num_segments`` is static; empty
        segments hold ``zero``; ids outside ``[0, num_segments)`` are dropped.
      reduce: ``(x, axis) -> ⊕`` of ``x`` along ``axis`` (``zero`` when that axis is empty).
      idempotent: ``a ⊕ a == a`` (min, max, or).
      commutative: ``a ⊗ b == b ⊗ a``.
      has_inverse: ⊕ has an inverse (a ring, e.g. REAL), so deltas can be subtracted.
      differentiable: ⊕ and ⊗ are smooth, so ``jax.grad`` gives true gradients (not
        subgradients).
      dtype_kind: ``"float"`` or ``"bool"``: the kind of arrays the semiring works on.

    Example:
      >>> from mmsb_jax import semirings
      >>> import jax.numpy as jnp
      >>> t = semirings.TROPICAL
      >>> float(t.add(jnp.float32(3.0), jnp.float32(2.0)))
      2.0
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

    def zeros(self, shape, dtype=None) -> Array:
        """An array filled with the semiring's zero."""
        return jnp.full(shape, self.zero, dtype=self._dtype(dtype))

    def ones(self, shape, dtype=None) -> Array:
        """An array filled with the semiring's one."""
        return jnp.full(shape, self.one, dtype=self._dtype(dtype))

    def zero_like(self, x: Array) -> Array:
        return jnp.full(jnp.shape(x), self.zero, dtype=jnp.result_type(x))

    def one_like(self, x: Array) -> Array:
        return jnp.full(jnp.shape(x), self.one, dtype=jnp.result_type(x))

    def _dtype(self, dtype):
        if dtype is not None:
            return dtype
        return jnp.bool_ if self.dtype_kind == "bool" else jnp.float32

    def accepts(self, dtype) -> bool:
        """Whether arrays of ``dtype`` are valid carriers for this semiring."""
        dt = np.dtype(dtype)
        if self.dtype_kind == "bool":
            return dt == np.bool_
        return bool(jnp.issubdtype(dt, jnp.floating))  # jnp: also bfloat16 and the other ml_dtypes floats
