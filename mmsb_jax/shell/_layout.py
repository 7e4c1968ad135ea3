"""Re-laying out pools (:func:`mmsb_jax.optimize_layout`): placement, never state.

Pages move to new rows of their pool (:meth:`PagePool.relayout`), in the order
:func:`mmsb_jax.adaptive.layout_order` gives, and pools fragmented by deletes shrink to their
live pages. Nothing is logged and no epoch passes: page ids, values, dependencies, digests,
the log and checkpoints (which store canonical slots) are the same before and after.
"""

from __future__ import annotations

import time

import numpy as np

from .._errors import InvalidArgumentError, StateClosedError
from ..adaptive import LAYOUT_METHODS, layout_order
from ..pages import move_rows
from ..telemetry import gather_locality
from ._distributed import collective


class Layout:
    """Mixin of :class:`MMSBState`: :meth:`optimize_layout` and its report."""

    _layout_report: dict | None = None

    @collective("optimize_layout")
    def optimize_layout(self, *, method: str = "rcm", compact: bool = True) -> dict:
        """Move pages within their pools so propagation reads neighbouring memory, and
        (``compact``) shrink pools to their live pages; see :func:`mmsb_jax.optimize_layout`."""
        if method not in LAYOUT_METHODS:
            raise InvalidArgumentError(f"method must be one of {list(LAYOUT_METHODS)}, got method={method!r}")
        if not isinstance(compact, bool):
            raise InvalidArgumentError(f"compact must be a bool, got compact={compact!r}")
        with self._lock:
            if self._closed:  # a read-only snapshot may be re-laid out: nothing is logged
                raise StateClosedError(f"the state at {self.path!r} is stopped")
            t_all = time.perf_counter()
            reports = []
            for pool in self._pools:
                reports.append(self._relayout_pool(pool, method, compact))
            report = {
                "method": method,
                "compact": compact,
                "seconds": time.perf_counter() - t_all,
                "bytes_returned": sum(r.get("bytes_returned", 0) for r in reports),
                "pools": reports,
            }
            self._layout_report = report
            return report

    def _relayout_pool(self, pool, method: str, compact: bool) -> dict:
        out = {"pool": pool.index, "pages": pool.live, "rows_before": pool.capacity}
        if pool.sharding is not None:
            return dict(out, skipped="sharded pools keep their layout (their rows are split over devices)")
        ids = self._table.ids_in_pool(pool.index)
        rows = self._table.slot[ids]
        pg = self._pool_graphs.get(pool.index)
        graph = pg.graph if pg is not None and pg.graph.num_edges else None
        t0 = time.perf_counter()
        labels = np.full(pool.capacity, -1, np.int64)
        labels[rows] = pool.canonical(rows)  # the order depends on the pages, not where they sit
        order = layout_order(graph, rows, pool.capacity, method if graph is not None else "compact", labels)
        capacity = max(pool.live, 1) if compact else pool.capacity  # unsharded: no shard rounding
        if capacity == pool.capacity and np.array_equal(order, np.arange(order.size)):
            return dict(out, rows_after=pool.capacity, bytes_returned=0, moved=0, seconds=time.perf_counter() - t0)
        before = self._locality(graph, pool) if graph is not None else None
        new_row = np.full(pool.capacity, -1, np.int64)
        new_row[order] = np.arange(order.size)
        old_capacity = pool.capacity
        pool.relayout(order, capacity)
        self._table.slot[ids] = new_row[rows]
        if pg is not None:
            pg.move(order, new_row, lambda x: move_rows(x, order, capacity))
        self._telemetry.move_writes(pool.index, order)
        out.update(
            rows_after=pool.capacity,
            bytes_returned=max(0, old_capacity - pool.capacity) * pool.page_bytes,
            moved=int(np.count_nonzero(order != np.arange(order.size))),
            seconds=time.perf_counter() - t0,
        )
        if graph is not None:
            out["gather_distance_before"] = before
            out["gather_distance_after"] = self._locality(pg.graph, pool)
        return out

    @staticmethod
    def _locality(graph, pool):
        a = graph.edge_arrays()
        return gather_locality(a["src"], a["dst"], max(pool.live, 1))["gather_distance"]

    def _layout_stats(self) -> dict:
        """``get_stats()["adaptive"]["layout"]``: the last :meth:`optimize_layout` report
        (``None`` before one) and which pools sit out of canonical order now."""
        return {"last": self._layout_report, "relaid_pools": [p.index for p in self._pools if p.relaid]}


def optimize_layout(state, *, method: str = "rcm", compact: bool = True) -> dict:
    """Move pages within their pools so full propagation reads neighbouring memory, and
    shrink pools that deletes left fragmented. Placement only: page ids, values, epochs,
    dependencies, :func:`state_digest`, the log and checkpoints are the same before and
    after (checkpoints store pages by canonical slot), and nothing is logged; a reopened or
    replayed state starts in canonical order again. Read-only snapshots
    (:func:`replay_to_epoch`) may be re-laid out too.

    Each pool with dependencies is put in propagation order (level by level, parents before
    children) with ``method`` ordering pages within a level (``"rcm"``: reverse
    Cuthill–McKee over the dependency graph; ``"levels"``: the current order;
    ``"compact"``: no reordering, only compaction); every pool's live pages move to its
    first rows and, with ``compact``, the arena shrinks to them (returning the rest of its
    memory). What it gains depends on the graph and page width: measure it
    (``mmsb bench --only layout``; ``docs/performance.md`` has this machine's figures).

    Returns:
      A report: ``method``, ``compact``, ``seconds``, ``bytes_returned`` and per pool
      ``pool``, ``pages``, ``rows_before``, ``rows_after``, ``bytes_returned``, ``moved``
      (pages that changed rows), ``seconds``, and for pools with dependencies
      ``gather_distance_before`` / ``_after`` (see ``get_stats(state)["cost"]``); a sharded
      pool is left as it is (``skipped`` says why). The last report is also in
      ``get_stats(state)["adaptive"]["layout"]``.

    Raises:
      InvalidArgumentError: an unknown ``method`` or a non-bool ``compact`` (nothing moves).
      StateClosedError: the state is closed.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start(semiring="real")
      >>> a, b, c = (mmsb.create_page(state, size=2, dtype=jnp.float32) for _ in range(3))
      >>> _ = mmsb.add_dependencies(state, [c.id, b.id], [b.id, a.id])   # c -> b -> a
      >>> _ = mmsb.update_page(state, c.id, jnp.ones(2, jnp.float32))
      >>> before = mmsb.state_digest(state)
      >>> report = mmsb.optimize_layout(state)
      >>> report["pools"][0]["moved"], mmsb.state_digest(state) == before
      (2, True)
      >>> mmsb.query_page(state, a.id).tolist()
      [1.0, 1.0]
      >>> mmsb.mmsb_stop(state)
    """
    from ._state import MMSBState

    if not isinstance(state, MMSBState):
        raise InvalidArgumentError(f"state={state!r} is not an MMSBState")
    return state.optimize_layout(method=method, compact=compact)
