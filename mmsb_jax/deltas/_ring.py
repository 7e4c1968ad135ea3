"""A device-side delta log for ``jit``: a fixed-capacity ring that compiled code appends to.

Code inside ``jit`` / ``lax.scan`` cannot write files. It appends its sparse page writes to a
:class:`DeltaRing` (a pytree carried through the loop); between steps the host drains the ring
into the state (:meth:`MMSBState.drain_ring`), which applies and logs them as one batch. If
more deltas were appended than the ring holds, draining raises :class:`RingOverflowError`
and changes nothing: size the ring for the steps between drains.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InvalidArgumentError, RingOverflowError
from ..pages import moved, unmoved

Array = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeltaRing:
    """Pending sparse deltas: row ``i < count`` sets ``page[page_ids[i]].flat[indices[i]] = values[i]``.

    ``count`` keeps counting past the capacity, so an overflow is detected, never hidden.
    """

    page_ids: Array  # int32 (capacity,)
    indices: Array  # int32 (capacity, k)
    values: Array  # (capacity, k)
    count: Array  # int32 ()

    @property
    def capacity(self) -> int:
        return int(self.page_ids.shape[0])


def delta_ring(capacity: int, k: int, dtype) -> DeltaRing:
    """An empty ring for up to ``capacity`` sparse deltas of ``k`` entries each.

    Example:
      >>> import jax, jax.numpy as jnp, mmsb_jax as mmsb
      >>> ring = mmsb.delta_ring(8, 2, jnp.float32)
      >>> ring = jax.jit(mmsb.ring_append)(ring, jnp.array([0]), jnp.array([[0, 1]]), jnp.ones((1, 2)))
      >>> int(ring.count)
      1
    """
    if capacity <= 0 or k <= 0:
        raise InvalidArgumentError(f"delta_ring needs capacity > 0 and k > 0, got capacity={capacity}, k={k}")
    return DeltaRing(
        jnp.zeros((capacity,), jnp.int32),
        jnp.zeros((capacity, k), jnp.int32),
        jnp.zeros((capacity, k), dtype),
        jnp.zeros((), jnp.int32),
    )


def ring_append(ring: DeltaRing, page_ids: Array, indices: Array, values: Array) -> DeltaRing:
    """Append ``n`` sparse deltas (pure; use inside ``jit``). Shapes: ``(n,)``, ``(n, k)``, ``(n, k)``.

    Raises (at trace time) ``InvalidArgumentError`` when shapes or dtypes do not fit the ring.
    """
    page_ids = jnp.asarray(page_ids)
    indices = jnp.asarray(indices)
    values = jnp.asarray(values)
    n = page_ids.shape[0]
    if page_ids.ndim != 1 or indices.shape != (n, ring.indices.shape[1]) or values.shape != indices.shape:
        raise InvalidArgumentError(
            f"ring_append needs page_ids (n,), indices and values (n, {ring.indices.shape[1]}); got "
            f"{page_ids.shape}, {indices.shape}, {values.shape}"
        )
    if values.dtype != ring.values.dtype:
        raise InvalidArgumentError(f"ring holds {ring.values.dtype} values, got {values.dtype}")
    if n > ring.capacity:
        raise InvalidArgumentError(f"appending n={n} deltas to a ring of capacity {ring.capacity}")
    pos = (ring.count + jnp.arange(n, dtype=jnp.int32)) % ring.capacity  # n <= capacity: unique
    return DeltaRing(
        ring.page_ids.at[pos].set(page_ids.astype(jnp.int32), unique_indices=True),
        ring.indices.at[pos].set(indices.astype(jnp.int32), unique_indices=True),
        unmoved(moved(ring.values).at[pos].set(moved(values), unique_indices=True), values.dtype),
        ring.count + jnp.int32(n),
    )


def ring_contents(ring: DeltaRing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host side: the pending rows in append order; raises RingOverflowError after an overflow."""
    count = int(ring.count)
    if count > ring.capacity:
        raise RingOverflowError(
            f"the delta ring overflowed: count={count} deltas were appended to a ring of "
            f"capacity {ring.capacity}; {count - ring.capacity} were overwritten. Nothing was "
            f"applied; drain more often or use a larger ring"
        )
    return (
        np.asarray(ring.page_ids[:count]).astype(np.int64),
        np.asarray(ring.indices[:count]),
        np.asarray(ring.values[:count]),
    )


def ring_cleared(ring: DeltaRing) -> DeltaRing:
    return dataclasses.replace(ring, count=jnp.zeros((), jnp.int32))
