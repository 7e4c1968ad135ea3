"""The shell's view of dependencies inside one pool: a graph over slots and its values.

Dependencies link pages of one pool (one shape and dtype), so propagation runs over the
pool's arena directly: ``b`` is the pool array (what deltas wrote), ``x`` the propagated
array readers see. The compiled graph is cached and rebuilt only when the edges or the
pool's capacity change; writes refresh ``x`` incrementally (only the dirty cone).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..graph import ShadowPageGraph, propagate, propagate_incremental


class PoolGraph:
    """Edges between slots of one pool, the compiled program and the derived values."""

    def __init__(self, semiring):
        self.semiring = semiring
        self.graph = ShadowPageGraph()
        self._cg = None
        self._cg_key = None
        self.x = None  # (capacity, *shape) propagated values; None without edges

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
        self.x = propagate(self.compiled(b.shape[0]), b) if self.has_edges else None

    def refresh(self, b, slots) -> None:
        """Propagate a write to ``slots``: through their dependent cone only under idempotent
        semirings (min/max/or: bit-exact with a full pass); with a full pass otherwise, since
        XLA may fuse ``b + w*x`` differently in the two programs (last-bit differences for
        REAL/LOG), and replay must reproduce live values bit for bit."""
        if not self.has_edges:
            self.x = None
        elif self.x is None or self.x.shape[0] != b.shape[0] or not self.semiring.idempotent:
            self.refresh_full(b)
        else:
            dirty = np.zeros(b.shape[0], bool)
            dirty[np.asarray(slots, np.int64)] = True
            self.x, _ = propagate_incremental(self.compiled(b.shape[0]), self.x, b, jnp.asarray(dirty))

    def visible(self, b):
        """What readers see: ``x``, recomputed first if the pool grew since."""
        if self.has_edges and (self.x is None or self.x.shape[0] != b.shape[0]):
            self.refresh_full(b)
        return b if self.x is None else self.x
