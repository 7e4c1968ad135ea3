"""Deltas (Layer 1, pure core): the only way a page changes.

Three kinds, each a registered pytree (arrays are leaves, shapes and semirings are static):

* :class:`DenseDelta` — a bool ``mask`` and a ``payload`` of the page's shape:
  ``apply = where(mask, payload, page)``.
* :class:`SparseDelta` — flat ``indices`` into the page and their ``values``; when an index
  repeats, the last entry wins (resolved deterministically, never by XLA's scatter order).
* :class:`AccumulateDelta` — a ``payload`` combined with the page by a semiring's ⊕:
  ``apply = page ⊕ payload``.

Everything here is pure and works under ``jit`` and ``vmap``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_int
from .._compat import is_tracer
from .._errors import InvalidDeltaError
from ..pages import MAX_PAGE_ELEMS, moved, unmoved
from ..semirings import Semiring, get_semiring

Array = Any


def _static():
    """A field that is hashable metadata of the pytree (not a leaf)."""
    return dataclasses.field(metadata=dict(static=True))


# Every pytree dataclass of the package is registered the same way: frozen dataclass, arrays
# as leaves, fields marked ``_static()`` as metadata (``jax.tree_util.register_dataclass``).
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseDelta:
    """Overwrite the positions where ``mask`` is true with ``payload``."""

    mask: Array
    payload: Array

    @property
    def shape(self):
        return tuple(jnp.shape(self.payload))

    @property
    def dtype(self):
        return jnp.result_type(self.payload)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseDelta:
    """Overwrite ``page.flat[indices[i]]`` with ``values[i]``; the last entry wins on repeats."""

    indices: Array
    values: Array
    shape: tuple = _static()

    @property
    def dtype(self):
        return jnp.result_type(self.values)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AccumulateDelta:
    """Combine ``payload`` into the page with the semiring's ⊕: ``page ⊕ payload``."""

    payload: Array
    semiring: Semiring = _static()

    @property
    def shape(self):
        return tuple(jnp.shape(self.payload))

    @property
    def dtype(self):
        return jnp.result_type(self.payload)


Delta = Union[DenseDelta, SparseDelta, AccumulateDelta]
DELTA_TYPES = (DenseDelta, SparseDelta, AccumulateDelta)


# --------------------------------------------------------------------------- constructors
def _is_concrete(x) -> bool:
    return not is_tracer(x)


def _as_array(x, what: str):
    """``jnp.asarray(x)`` (tracers pass through), with a clear error for what is no array."""
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise InvalidDeltaError(f"{what}={x!r} is not an array of numbers: {e}") from None


def dense_delta(mask, payload) -> DenseDelta:
    """A dense delta: ``apply_delta(page, d) == where(mask, payload, page)``.

    Args:
      mask: bool array, the page's shape: which positions change.
      payload: the new values, the page's shape and dtype (only masked positions matter);
        a delta is built without its page, so Python data takes JAX's default dtype (int32 /
        float32): give an array of the page's dtype for other pages.

    Raises:
      InvalidDeltaError: ``mask`` is not bool or its shape differs from ``payload``'s.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> d = mmsb.dense_delta(jnp.array([True, False]), jnp.array([7, 7], jnp.int32))
      >>> mmsb.apply_delta(jnp.array([1, 2], jnp.int32), d).tolist()
      [7, 2]
    """
    mask = _as_array(mask, "dense_delta mask")
    payload = _as_array(payload, "dense_delta payload")
    if mask.dtype != jnp.bool_:
        raise InvalidDeltaError(f"dense_delta mask must be bool, got mask.dtype={mask.dtype}")
    if mask.shape != payload.shape:
        raise InvalidDeltaError(
            f"dense_delta mask and payload must have one shape, got mask.shape={mask.shape} "
            f"and payload.shape={payload.shape}"
        )
    return DenseDelta(mask, payload)


def sparse_delta(indices, values, shape) -> SparseDelta:
    """A sparse delta: set ``page.flat[indices[i]] = values[i]`` (last entry wins on repeats).

    Args:
      indices: int array ``(k,)`` of flat (row-major) indices into the page.
      values: array ``(k,)`` of the page's dtype (Python data takes JAX's default dtype,
        int32 / float32, as the delta is built without its page: e.g. ``jnp.array(v, jnp.uint8)``).
      shape: the page's shape (an int for 1-D pages).

    Raises:
      InvalidDeltaError: indices not integer or not 1-D, lengths differ, or (when the indices
        are concrete) an index outside ``[0, prod(shape))``.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> d = mmsb.sparse_delta([0, 2, 0], jnp.array([5., 6., 9.]), shape=3)
      >>> mmsb.apply_delta(jnp.zeros(3), d).tolist()
      [9.0, 0.0, 6.0]
    """
    shape = _normalize_shape(shape)
    size = math.prod(shape)
    if size > MAX_PAGE_ELEMS:
        raise InvalidDeltaError(
            f"sparse_delta needs a page of at most {MAX_PAGE_ELEMS} elements (int32 indices), got shape {shape}"
        )
    if _is_concrete(indices):
        idx_np = np.asarray(indices)
        if idx_np.dtype == object or (idx_np.size and not np.issubdtype(idx_np.dtype, np.integer)):
            raise InvalidDeltaError(f"sparse_delta indices must be integers, got dtype {idx_np.dtype}")
        if idx_np.ndim != 1:
            raise InvalidDeltaError(f"sparse_delta indices must be 1-D, got shape {idx_np.shape}")
        if idx_np.size:
            lo, hi = int(idx_np.min()), int(idx_np.max())
            if lo < 0 or hi >= size:
                bad = lo if lo < 0 else hi
                raise InvalidDeltaError(
                    f"sparse_delta index {bad} is out of range for a page of shape {shape} "
                    f"(expected 0 <= index < {size})"
                )
        indices = jnp.asarray(idx_np.astype(np.int32))
    else:
        if not jnp.issubdtype(indices.dtype, jnp.integer) or indices.ndim != 1:
            raise InvalidDeltaError(
                f"sparse_delta indices must be a 1-D integer array, got {indices.dtype}{indices.shape}"
            )
        indices = indices.astype(jnp.int32)
    values = _as_array(values, "sparse_delta values")
    if values.shape != indices.shape:
        raise InvalidDeltaError(
            f"sparse_delta needs one value per index, got indices.shape={indices.shape} "
            f"and values.shape={values.shape}"
        )
    return SparseDelta(indices, values, shape)


def accumulate_delta(payload, semiring="real") -> AccumulateDelta:
    """An accumulate delta: ``apply_delta(page, d) == semiring.add(page, payload)``.

    Under ``TROPICAL`` it is a min-update, under ``REAL`` an increment.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> d = mmsb.accumulate_delta(jnp.array([1., 5.]), "tropical")
      >>> mmsb.apply_delta(jnp.array([3., 3.]), d).tolist()
      [1.0, 3.0]
    """
    sr = get_semiring(semiring)
    payload = _as_array(payload, "accumulate_delta payload")
    if not sr.accepts(payload.dtype):
        raise InvalidDeltaError(
            f"accumulate_delta under semiring {sr.name!r} needs a {sr.dtype_kind} payload, "
            f"got dtype {payload.dtype}"
        )
    return AccumulateDelta(payload, sr)


def _normalize_shape(shape) -> tuple:
    if is_int(shape):
        dims = (shape,)
    elif isinstance(shape, (tuple, list)) and all(is_int(s) for s in shape):
        dims = shape
    else:
        raise InvalidDeltaError(f"shape must be an int or a tuple of ints, got shape={shape!r}")
    shape = tuple(int(s) for s in dims)
    if any(s < 0 for s in shape):
        raise InvalidDeltaError(f"shape must not have negative sizes, got shape={shape}")
    return shape


# --------------------------------------------------------------------------- checks
def touches_nothing(delta) -> bool:
    """Whether ``delta`` writes no element: a sparse delta without indices or a dense delta
    whose mask is all false (host-side; reads the mask). Accumulate deltas touch every element."""
    if isinstance(delta, SparseDelta):
        return delta.indices.shape[0] == 0
    if isinstance(delta, DenseDelta):
        return not bool(np.asarray(delta.mask).any())
    return False


def check_delta_fits(delta, shape, dtype, *, where: str = "") -> None:
    """Raise :class:`InvalidDeltaError` unless ``delta`` fits a page of ``shape`` / ``dtype``."""
    at = f" ({where})" if where else ""
    if not isinstance(delta, DELTA_TYPES):
        raise InvalidDeltaError(f"expected a Delta (dense, sparse or accumulate){at}, got {type(delta).__name__}")
    shape = tuple(shape)
    if tuple(delta.shape) != shape:
        raise InvalidDeltaError(f"delta shape {tuple(delta.shape)} does not fit a page of shape {shape}{at}")
    if np.dtype(delta.dtype) != np.dtype(dtype):
        raise InvalidDeltaError(f"delta dtype {np.dtype(delta.dtype)} does not match the page dtype {np.dtype(dtype)}{at}")
    if isinstance(delta, DenseDelta):
        if jnp.result_type(delta.mask) != jnp.bool_ or tuple(jnp.shape(delta.mask)) != shape:
            raise InvalidDeltaError(
                f"dense delta mask must be bool of shape {shape}, got "
                f"{jnp.result_type(delta.mask)}{tuple(jnp.shape(delta.mask))}{at}"
            )
    elif isinstance(delta, SparseDelta):
        ishape, vshape = tuple(jnp.shape(delta.indices)), tuple(jnp.shape(delta.values))
        if len(ishape) != 1 or not jnp.issubdtype(jnp.result_type(delta.indices), jnp.integer):
            raise InvalidDeltaError(
                f"sparse delta indices must be a 1-D integer array, got "
                f"{jnp.result_type(delta.indices)}{ishape}{at}"
            )
        if vshape != ishape:
            raise InvalidDeltaError(
                f"sparse delta needs one value per index, got indices{ishape} and values{vshape}{at}"
            )
    if isinstance(delta, AccumulateDelta) and not delta.semiring.accepts(dtype):
        raise InvalidDeltaError(
            f"accumulate delta under semiring {delta.semiring.name!r} cannot act on a {np.dtype(dtype)} page{at}"
        )


# --------------------------------------------------------------------------- apply
def last_writer_mask(indices: Array) -> Array:
    """``keep[i]`` is true iff no later entry ``j > i`` has ``indices[j] == indices[i]``.

    Deterministic (a stable sort, not scatter order), ``O(k log k)``; used to resolve repeated
    indices so every scatter target receives exactly one write.
    """
    k = indices.shape[0]
    if k <= 1:
        return jnp.ones((k,), jnp.bool_)
    order = jnp.argsort(indices, stable=True)
    s = indices[order]
    last_in_run = jnp.concatenate([s[1:] != s[:-1], jnp.ones((1,), jnp.bool_)])
    return jnp.zeros((k,), jnp.bool_).at[order].set(last_in_run, unique_indices=True)


def _scatter_last_wins(flat: Array, indices: Array, values: Array) -> Array:
    size = flat.shape[0]
    keep = last_writer_mask(indices) & (indices >= 0) & (indices < size)
    target = jnp.where(keep, indices, size)  # losers go out of bounds and are dropped
    out = moved(flat).at[target].set(moved(values.astype(flat.dtype)), mode="drop")
    return unmoved(out, flat.dtype)


def apply_delta(page: Array, delta: Delta) -> Array:
    """Apply ``delta`` to ``page`` and return the new page (pure; jit/vmap/grad-safe).

    Raises:
      InvalidDeltaError: (at trace time) the delta's shape or dtype does not fit the page.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> p = jnp.zeros(4, jnp.float32)
      >>> mmsb.apply_delta(p, mmsb.sparse_delta([1], jnp.array([2.0]), shape=4)).tolist()
      [0.0, 2.0, 0.0, 0.0]
    """
    page = jnp.asarray(page)
    check_delta_fits(delta, page.shape, page.dtype)
    if isinstance(delta, DenseDelta):
        return unmoved(jnp.where(delta.mask, moved(jnp.asarray(delta.payload).astype(page.dtype)), moved(page)), page.dtype)
    if isinstance(delta, SparseDelta):
        flat = _scatter_last_wins(page.reshape(-1), delta.indices, delta.values)
        return flat.reshape(page.shape)
    return delta.semiring.add(page, delta.payload).astype(page.dtype)


# --------------------------------------------------------------------------- merge
def _to_dense(delta: SparseDelta) -> DenseDelta:
    size = int(np.prod(delta.shape, dtype=np.int64))
    mask = _scatter_last_wins(jnp.zeros((size,), jnp.bool_), delta.indices, jnp.ones_like(delta.indices, jnp.bool_))
    payload = _scatter_last_wins(jnp.zeros((size,), delta.dtype), delta.indices, delta.values)
    return DenseDelta(mask.reshape(delta.shape), payload.reshape(delta.shape))


def merge_deltas(d1: Delta, d2: Delta) -> Delta:
    """One delta equal to ``d1`` then ``d2``: ``apply(apply(p, d1), d2) == apply(p, merge(d1, d2))``.

    * dense/dense -> dense; sparse/sparse -> sparse (entries concatenated, last wins);
      dense/sparse either way -> dense.
    * accumulate/accumulate under one semiring -> accumulate with ``payload1 ⊕ payload2``
      (exact for idempotent semirings; for REAL floats it is equal up to rounding).
    * an overwrite (dense or sparse) followed by an accumulate, or the reverse, or two
      accumulates under different semirings, cannot be one delta of these kinds and is refused.

    Raises:
      InvalidDeltaError: shapes or dtypes differ, or the kinds cannot be merged.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> d1 = mmsb.sparse_delta([0], jnp.array([1.]), 2)
      >>> d2 = mmsb.sparse_delta([0], jnp.array([2.]), 2)
      >>> mmsb.apply_delta(jnp.zeros(2), mmsb.merge_deltas(d1, d2)).tolist()
      [2.0, 0.0]
    """
    for i, d in enumerate((d1, d2), 1):
        if not isinstance(d, DELTA_TYPES):
            raise InvalidDeltaError(f"merge_deltas argument d{i} is not a Delta: {type(d).__name__}")
    if tuple(d1.shape) != tuple(d2.shape) or np.dtype(d1.dtype) != np.dtype(d2.dtype):
        raise InvalidDeltaError(
            f"merge_deltas needs deltas of one shape and dtype, got {tuple(d1.shape)}/{np.dtype(d1.dtype)} "
            f"and {tuple(d2.shape)}/{np.dtype(d2.dtype)}"
        )
    acc1, acc2 = isinstance(d1, AccumulateDelta), isinstance(d2, AccumulateDelta)
    if acc1 or acc2:
        if acc1 and acc2 and d1.semiring == d2.semiring:
            return AccumulateDelta(d1.semiring.add(d1.payload, d2.payload).astype(d1.dtype), d1.semiring)
        raise InvalidDeltaError(
            f"cannot merge a {type(d1).__name__} with a {type(d2).__name__}"
            + (f" (semirings {d1.semiring.name!r} and {d2.semiring.name!r})" if acc1 and acc2 else "")
            + "; apply them in order instead"
        )
    if isinstance(d1, SparseDelta) and isinstance(d2, SparseDelta):
        return SparseDelta(
            jnp.concatenate([d1.indices, d2.indices]), jnp.concatenate([d1.values, d2.values]), d1.shape
        )
    a = _to_dense(d1) if isinstance(d1, SparseDelta) else d1
    b = _to_dense(d2) if isinstance(d2, SparseDelta) else d2
    return DenseDelta(a.mask | b.mask, jnp.where(b.mask, b.payload, a.payload))


# --------------------------------------------------------------------------- diff
def bit_equal(a: Array, b: Array) -> Array:
    """Elementwise bit-for-bit equality (NaN equals an identical NaN; -0.0 differs from 0.0).

    Raises:
      InvalidDeltaError: ``a`` and ``b`` differ in shape or dtype.
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise InvalidDeltaError(f"cannot compare {a.dtype}{a.shape} with {b.dtype}{b.shape}: shapes and dtypes must match")
    if a.dtype == jnp.bool_:
        return a == b
    itemsize = np.dtype(a.dtype).itemsize
    as_int = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[itemsize]
    return jax.lax.bitcast_convert_type(a, as_int) == jax.lax.bitcast_convert_type(b, as_int)


def diff_delta(old: Array, new: Array) -> DenseDelta:
    """The dense delta that turns ``old`` into ``new`` (mask = positions whose bits differ)."""
    new = jnp.asarray(new)
    return DenseDelta(~bit_equal(old, new), new)
