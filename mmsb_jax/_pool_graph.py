"""The shell's view of dependencies inside one pool: a graph over slots and its values.

Dependencies link pages of one pool (one shape and dtype), so propagation runs over the
pool's arena directly: ``b`` is the pool array (what deltas wrote), ``x`` the propagated
array readers see. The compiled graph is cached and rebuilt only when the edges or the
pool's capacity change; writes refresh ``x`` incrementally (only the dirty cone).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .graph import ShadowPageGraph, propagate, propagate_incremental


class PoolGraph:
    """Edges between slots of one pool, the compiled program and the derived values."""

    def __init__(self, semiring):
        self.semiring = semiring
        self.graph = ShadowPageGraph()
        self._cg = None
        self._cg_key = None
        self.x = None  # (capacity, *shape) propagated values, or None when stale

    @property
    def has_edges(self) -> bool:
        return self.graph.num_edges > 0

    def compiled(self, capacity: int):
        key = (self.graph.version, capacity)
        if self._cg_key != key:
            self._cg = self.graph.compile(self.semiring, num_nodes=capacity)
            self._cg_key = key
        return self._cg

    def refresh_full(self, b) -> None:
        """Recompute every value from ``b`` (after an edge change, a delete or a growth)."""
        if not self.has_edges:
            self.x = None
            return
        self.x = propagate(self.compiled(b.shape[0]), b)

    def refresh(self, b, slots) -> np.ndarray | None:
        """Propagate a write to ``slots``; returns the slots whose visible value changed."""
        if not self.has_edges:
            self.x = None
            return None
        if self.x is None or self.x.shape[0] != b.shape[0]:
            old = None if self.x is None else np.asarray(self.x)
            self.refresh_full(b)
            if old is None or old.shape != self.x.shape:
                return None  # unknown: the caller treats every written slot as changed
            return _changed_rows(old, np.asarray(self.x))
        dirty = np.zeros(b.shape[0], bool)
        dirty[np.asarray(slots, np.int64)] = True
        self.x, changed = propagate_incremental(self.compiled(b.shape[0]), self.x, b, jnp.asarray(dirty))
        return np.flatnonzero(np.asarray(changed))

    def visible(self, b):
        return b if self.x is None else self.x


def _changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    flat_a = a.reshape(a.shape[0], -1).view(np.uint8) if a.dtype != np.bool_ else a.reshape(a.shape[0], -1)
    flat_b = b.reshape(b.shape[0], -1).view(np.uint8) if b.dtype != np.bool_ else b.reshape(b.shape[0], -1)
    return np.flatnonzero((flat_a != flat_b).any(axis=1))
