"""Where the pages of a pool should sit so propagation reads neighbouring memory.

Full propagation (:func:`mmsb_jax.graph.propagate`) copies the pool into *internal rows*
(level by level, parents before children; within a level by kind, chunk count, derive
group and then node id: :func:`mmsb_jax.graph._plan.row_order`), runs its steps over them and
copies the result back. :func:`layout_order` orders the live rows of a pool the same way,
with a locality order in place of the node id, so that after a re-layout

* the copies in and out are sequential (a page's row is its internal row), and
* within a level, nodes whose parents are near each other sit near each other, so a
  step's gathers touch fewer, closer cache lines.

Methods (the within-level key):

* ``"rcm"``: reverse Cuthill–McKee (``scipy.sparse.csgraph``) over the undirected graph —
  neighbours get close ranks;
* ``"levels"``: the current row order (only the level structure is followed);
* ``"compact"``: no graph order at all — live rows keep their order and move to the front
  (what a pool without dependencies gets).

Measured, not assumed (``benchmarks/bench_layout.py``): which method pays, and by how much,
depends on the graph and the page width. Imports ``mmsb_jax.graph`` only.
"""

from __future__ import annotations

import numpy as np

from ..graph import _plan

LAYOUT_METHODS = ("rcm", "levels", "compact")


def _rcm_rank(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Each node's position in a reverse Cuthill–McKee order of the undirected graph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    u = np.concatenate([src, dst])
    v = np.concatenate([dst, src])
    a = csr_matrix((np.ones(u.size, np.int8), (u, v)), shape=(n, n))
    order = reverse_cuthill_mckee(a, symmetric_mode=True)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


def layout_order(graph, rows, capacity: int, method: str = "rcm", labels=None) -> np.ndarray:
    """The live ``rows`` of a pool in their new order: ``order[i]`` is the row whose page
    goes to row ``i``.

    Args:
      graph: the pool's :class:`~mmsb_jax.graph.ShadowPageGraph` over rows (or ``None``).
      rows: the rows that hold pages.
      capacity: the pool's rows (every node id of ``graph`` is below it).
      method: one of :data:`LAYOUT_METHODS`.
      labels: ``labels[row]``, a layout-independent id of the page in each live row (its
        canonical slot); the order is then a function of the graph over those ids alone, so
        laying out an already laid-out pool moves nothing (``None``: the rows themselves).

    Example:
      >>> import numpy as np
      >>> from mmsb_jax.graph import ShadowPageGraph
      >>> g = ShadowPageGraph(); g.add_dependencies([5, 3], [3, 0])   # 5 -> 3 -> 0
      >>> layout_order(g, np.array([0, 3, 5, 7]), 8).tolist()   # the root 5, the loose 7, then 3, 0
      [5, 7, 3, 0]
      >>> layout_order(g, np.array([0, 3, 5, 7]), 8, "compact").tolist()
      [0, 3, 5, 7]
    """
    rows = np.sort(np.asarray(rows, np.int64).reshape(-1))
    if method not in LAYOUT_METHODS:
        raise ValueError(f"method must be one of {LAYOUT_METHODS}, got {method!r}")
    if method == "compact" or graph is None or graph.num_edges == 0:
        return rows
    keys = _plan.node_keys(graph, capacity)
    lab = np.arange(capacity, dtype=np.int64) if labels is None else np.asarray(labels, np.int64)
    if method == "rcm":
        e = keys.edges
        src, dst = np.concatenate([e.src, e.rel_src]), np.concatenate([e.dst, e.rel_dst])
        n = int(lab[rows].max()) + 1  # the ids of live pages only: what is deleted changes nothing
        rank = _rcm_rank(lab[src], lab[dst], n)
        loc = np.zeros(capacity, np.int64)
        loc[rows] = rank[lab[rows]]
    else:
        loc = lab
    k = (loc[rows], keys.group[rows], -keys.chunks[rows], keys.kind[rows], keys.level[rows])
    return rows[np.lexsort(k)]
