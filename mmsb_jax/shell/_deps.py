"""Dependencies and observers for :class:`MMSBState`: edges between pages of one pool."""

from __future__ import annotations

from .._errors import GraphCycleError, InvalidArgumentError
from ..pages import PagePool
from ..deltas._pool_ops import host_rows
from ._distributed import collective
from ._pool_graph import PoolGraph


class Dependencies:
    """Mixin of :class:`MMSBState`: ``add_dependency``, ``remove_dependency``, ``observe``, propagation."""

    # ------------------------------------------------------------------ dependencies
    @collective("add_dependency")
    def add_dependency(self, parent, child, weight=None, edge_type: str = "data") -> int:
        """Make ``child`` depend on ``parent``; see :func:`mmsb_jax.add_dependency`."""
        with self._lock:
            self._check_open()
            pp, pool, sp = self._locate(parent)
            pc, pool_c, sc = self._locate(child)
            if pool_c is not pool:
                raise InvalidArgumentError(
                    f"page {pp} ({pool.dtype}{pool.shape} on {pool.location}) and page {pc} "
                    f"({pool_c.dtype}{pool_c.shape} on {pool_c.location}) differ; dependencies link "
                    f"pages of one shape, dtype and location"
                )
            if edge_type == "data" and not self.semiring.accepts(pool.dtype):
                raise InvalidArgumentError(
                    f"the state's semiring {self.semiring.name!r} cannot propagate {pool.dtype} pages "
                    f"(pages {pp} -> {pc}); use {self.semiring.dtype_kind} pages"
                )
            pg = self._pool_graphs.get(pool.index)
            if pg is None:
                pg = self._pool_graphs[pool.index] = PoolGraph(self.semiring)
            try:
                pg.graph.add_dependency(sp, sc, weight=weight, edge_type=edge_type)
            except GraphCycleError as e:
                owner = self._slot_owners(pool)
                raise GraphCycleError([owner.get(n, n) for n in e.cycle]) from None
            self._epoch += 1
            self._rec("log_add_dep", pp, pc, None if weight is None else float(weight), edge_type)
            self._refresh_all(pool, pg)
            return self._epoch

    @collective("remove_dependency")
    def remove_dependency(self, parent, child) -> int:
        """Remove the dependency ``parent -> child``; see :func:`mmsb_jax.remove_dependency`."""
        with self._lock:
            self._check_open()
            pp, pool, sp = self._locate(parent)
            pc, pool_c, sc = self._locate(child)
            pg = self._pool_graphs.get(pool.index)
            if pool_c is not pool or pg is None or not pg.graph.has_edge(sp, sc):
                raise InvalidArgumentError(f"there is no dependency {pp} -> {pc} to remove")
            pg.graph.remove_dependency(sp, sc)
            self._epoch += 1
            self._rec("log_remove_dep", pp, pc)
            self._refresh_all(pool, pg)
            return self._epoch

    def dependencies(self, *, insertion_order: bool = False) -> list[tuple[int, int, float | None, str]]:
        """Every dependency as ``(parent, child, weight or None, edge_type)``, by parent then child
        (or, with ``insertion_order=True``, pool by pool in the order propagation sums them)."""
        with self._lock:
            out = []
            for pi, pg in sorted(self._pool_graphs.items()):
                owner = self._slot_owners(self._pools[pi])
                a = pg.graph.edge_arrays()
                for u, v, w, d, t in zip(a["src"].tolist(), a["dst"].tolist(), a["weight"].tolist(),
                                         a["default_weight"].tolist(), a["edge_type"].tolist()):
                    out.append((owner[u], owner[v], None if d else w, str(t)))
            return out if insertion_order else sorted(out, key=lambda e: (e[0], e[1]))

    def _slot_owners(self, pool: PagePool) -> dict[int, int]:
        ids = self._table.ids_in_pool(pool.index)
        return dict(zip(self._table.slot[ids].tolist(), ids.tolist()))

    def _refresh_all(self, pool: PagePool, pg: PoolGraph) -> None:
        pg.refresh_full(pool.array)
        self._notify(pool)

    # ------------------------------------------------------------------ observers
    @collective("observe")
    def observe(self, page_id, callback) -> None:
        """Call ``callback(page_id, epoch)`` after each epoch in which the page's visible value
        changed (by a write to it, or by propagation into it): compared bit for bit with the
        value at the last call. Runs on the writing thread under the state's lock; it may read
        the state."""
        with self._lock:
            pid, pool, slot = self._locate(page_id)
            if not callable(callback):
                raise InvalidArgumentError(f"callback={callback!r} is not callable")
            self._observers.setdefault(pid, []).append(callback)
            self._observed[pid] = self._visible_bytes(pool, slot)

    def unobserve(self, page_id, callback) -> None:
        with self._lock:
            cbs = self._observers.get(int(page_id), [])
            if callback in cbs:
                cbs.remove(callback)
            if not cbs:
                self._observers.pop(int(page_id), None)
                self._observed.pop(int(page_id), None)

    def _visible_bytes(self, pool: PagePool, slot: int) -> bytes:
        return host_rows(self._visible_array(pool), [slot], pool.sharding)[0].tobytes()

    def _notify(self, pool: PagePool) -> None:
        """Fire the observers of ``pool``'s pages whose visible value changed since last time."""
        if not self._observers or self._log is None:  # none, or a replay in progress
            return
        for pid in sorted(self._observers):
            if self._table.pool[pid] != pool.index:
                continue
            now = self._visible_bytes(pool, int(self._table.slot[pid]))
            if now != self._observed.get(pid):
                self._observed[pid] = now
                for cb in list(self._observers[pid]):
                    cb(pid, self._epoch)

    # ------------------------------------------------------------------ hooks for layers above
    def _after_write(self, pool: PagePool, slots) -> None:
        """Propagate a write to ``slots`` of ``pool`` and tell the observers."""
        pg = self._pool_graphs.get(pool.index)
        if pg is not None and pg.has_edges:
            pg.refresh(pool.array, slots)
        self._notify(pool)
