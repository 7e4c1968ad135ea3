"""The shell's view of dependencies inside one pool: a graph over slots and its values.

Dependencies link pages of one pool (one shape and dtype), so propagation runs over the
pool's arena directly: ``b`` is the pool array (what deltas wrote), ``x`` the propagated
array readers see. The compiled graph is cached and rebuilt only when the edges or the
pool's capacity change (the graph layer's capacity buckets keep its jitted programs); writes
refresh ``x`` at once, through the dirty cone. Edge edits only mark ``x`` stale: the next
read or write brings it up to date in one pass, so a run of single edits costs one compile
and one propagation, not one per edit.
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
        self._stale: list | None = None  # arrays of slots whose value an edit may have changed; None: none
        self.derive_names: dict[int, str] = {}  # derived slot -> the name its function is logged as

    @property
    def has_edges(self) -> bool:
        return self.graph.num_edges > 0

    def compiled(self, capacity: int):
        key = (self.graph.version, capacity)
        if self._cg_key != key:
            self._cg = self.graph.compile(self.semiring, num_nodes=capacity)
            self._cg_key = key
        return self._cg

    def edited(self, slots) -> None:
        """Edges into ``slots`` changed (or pages left): ``x`` is recomputed when next read."""
        if self._stale is None:
            self._stale = []
        self._stale.append(np.asarray(slots, np.int64).reshape(-1))

    def invalidate(self) -> None:
        """Nodes left the graph: ``x`` is recomputed in full when next read."""
        self.x, self._stale = None, None

    def refresh_full(self, b) -> None:
        """Recompute every value from ``b`` (after an edge change, a delete or a growth)."""
        self._stale = None
        self.x = propagate(self.compiled(b.shape[0]), b) if self.has_edges else None

    def refresh(self, b, slots) -> None:
        """Propagate a write to ``slots`` (and any edits since the last refresh): through
        their dependent cone only under idempotent semirings (min/max/or: bit-exact with a full
        pass); with a full pass otherwise, since XLA may fuse ``b + w*x`` differently in the
        two programs (last-bit differences for REAL/LOG), and replay must reproduce live values
        bit for bit."""
        if not self.has_edges:
            self.x, self._stale = None, None
        elif self.x is None or self.x.shape[0] != b.shape[0] or not self.semiring.idempotent:
            self.refresh_full(b)
        else:
            dirty = np.zeros(b.shape[0], bool)
            dirty[np.asarray(slots, np.int64)] = True
            for stale in self._stale or ():
                dirty[stale] = True
            self._stale = None
            self.x, _ = propagate_incremental(self.compiled(b.shape[0]), self.x, b, jnp.asarray(dirty))

    def visible(self, b):
        """What readers see: ``x``, brought up to date first after edits or a growth."""
        if not self.has_edges:
            self.x, self._stale = None, None
            return b
        if self.x is None or self.x.shape[0] != b.shape[0]:
            self.refresh_full(b)
        elif self._stale is not None:
            self.refresh(b, np.zeros(0, np.int64))
        return self.x
