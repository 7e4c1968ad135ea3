"""The shell's view of dependencies inside one pool: a graph over slots and its values.

Dependencies link pages of one pool (one shape and dtype), so propagation runs over the
pool's arena directly: ``b`` is the pool array (what deltas wrote), ``x`` the propagated
array readers see. The compiled graph is cached and rebuilt only when the edges or the
pool's capacity change (the graph layer's capacity buckets keep its jitted programs); writes
refresh ``x`` at once, through the dirty cone. Edge edits only mark ``x`` stale: the next
read or write brings it up to date in one pass, so a run of single edits costs one compile
and one propagation, not one per edit.

Which pass follows a write (incremental through the dirty cone, or full) is the telemetry's
:class:`~mmsb_jax.telemetry.PropagationStrategy`'s choice, from the passes' measured times,
wherever both are bit-exact (idempotent semirings); every pass is timed to completion and
counted there.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ..graph import EDGE_TYPES, ShadowPageGraph, propagate, propagate_incremental

_VALUE_EDGES = np.array([EDGE_TYPES.index("data"), EDGE_TYPES.index("derive")], np.uint8)


class PoolGraph:
    """Edges between slots of one pool, the compiled program and the derived values."""

    def __init__(self, semiring, telemetry=None):
        self.semiring = semiring
        self.telemetry = telemetry  # the state's Telemetry: pass timings, figures, the strategy (None: untimed)
        self.graph = ShadowPageGraph()
        self._cg = None
        self._cg_key = None
        self.x = None  # (capacity, *shape) propagated values; None without edges
        self._stale: list | None = None  # arrays of slots whose value an edit may have changed; None: none
        self.derive_names: dict[int, str] = {}  # derived slot -> the name its function is logged as
        self._edges_key, self._value_edges = None, False
        self._warm: set = set()  # pass kinds run once on the current compiled graph

    @property
    def has_edges(self) -> bool:
        """Whether any edge changes values (data or derive edges; ordering edges do not)."""
        if self._edges_key != self.graph.version:
            codes = self.graph.edge_arrays()["type_code"] if self.graph.num_edges else np.zeros(0, np.uint8)
            self._value_edges = bool(np.isin(codes, _VALUE_EDGES).any())
            self._edges_key = self.graph.version
        return self._value_edges

    def compiled(self, capacity: int):
        key = (self.graph.version, capacity)
        if self._cg_key != key:
            # weights were checked when the state took them (a replayed log's are as logged)
            self._cg = self.graph.compile(self.semiring, num_nodes=capacity, check_sign=False)
            self._cg_key = key
            self._warm = set()  # the first pass of each kind may compile: not a cost sample
        return self._cg

    def edited(self, slots) -> None:
        """Edges into ``slots`` changed (or pages left): ``x`` is recomputed when next read."""
        if self._stale is None:
            self._stale = []
        self._stale.append(np.asarray(slots, np.int64).reshape(-1))

    def move(self, order, new_row, moved_x) -> None:
        """The pool's pages moved (:meth:`PagePool.relayout`): the page in row ``order[i]``
        is now in row ``i`` (``new_row[r]``: the new row of old row ``r``, -1 for a free
        row); ``moved_x(x)``: ``x`` moved the same way. Edges keep their order, so every page
        sums its parents as before."""
        self.graph = self.graph.relabeled(new_row)
        self.derive_names = {int(new_row[s]): name for s, name in self.derive_names.items()}
        if self.x is not None:
            self.x = moved_x(self.x)
        if self._stale is not None:
            self._stale = [new_row[s][new_row[s] >= 0] for s in self._stale]
        self._cg = self._cg_key = self._edges_key = None
        self._warm = set()

    def invalidate(self) -> None:
        """Nodes left the graph: ``x`` is recomputed in full when next read."""
        self.x, self._stale = None, None

    def refresh_full(self, b) -> None:
        """Recompute every value from ``b`` (after an edge change, a delete or a growth)."""
        self._stale = None
        if not self.has_edges:
            self.x = None
            return
        cg = self.compiled(b.shape[0])
        t0 = time.perf_counter()
        self.x = propagate(cg, b)
        if self.telemetry is not None:
            jax.block_until_ready(self.x)
            dt = time.perf_counter() - t0
            self.telemetry.full_pass(dt, self.graph.num_nodes, self.graph.num_edges, cg.num_steps)
            self._cost_sample("full", dt)

    def refresh(self, b, slots) -> None:
        """Propagate a write to ``slots`` (and any edits since the last refresh): through
        their dependent cone only under idempotent semirings (min/max/or: bit-exact with a full
        pass); with a full pass otherwise, since XLA may fuse ``b + w*x`` differently in the
        two programs (last-bit differences for REAL/LOG), and replay must reproduce live values
        bit for bit."""
        if not self.has_edges:
            self.x, self._stale = None, None
            return
        have = self.x is not None and self.x.shape[0] == b.shape[0]
        tel = self.telemetry
        if tel is not None:
            choice = tel.strategy.choose(exact=self.semiring.idempotent, have_values=have)
        else:
            choice = "incremental" if have and self.semiring.idempotent else "full"
        if choice == "full":
            self.refresh_full(b)
            return
        dirty = np.zeros(b.shape[0], bool)
        dirty[np.asarray(slots, np.int64)] = True
        for stale in self._stale or ():
            dirty[stale] = True
        self._stale = None
        t0 = time.perf_counter()
        self.x, changed = propagate_incremental(self.compiled(b.shape[0]), self.x, b, jnp.asarray(dirty))
        if tel is not None:
            jax.block_until_ready(self.x)
            dt = time.perf_counter() - t0
            tel.incremental_pass(dt, self.graph.num_nodes, int(np.count_nonzero(dirty)), changed)
            self._cost_sample("incremental", dt)

    def _cost_sample(self, kind: str, seconds: float) -> None:
        """Give the strategy a pass's time, unless it was the first of its kind on this
        compiled graph (which may include tracing and compiling)."""
        self.telemetry.strategy.record(kind, seconds, warmup=kind not in self._warm)
        self._warm.add(kind)

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
