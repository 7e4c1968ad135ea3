"""Result-preserving rewrites of a graph's compile plan (issue #13).

Only one is implemented: :func:`prune` drops the nodes no requested output reads
(``compile(..., outputs=ids)``), valid under every semiring. Merging parallel edges has
nothing to merge (the builder keys edges by ``(parent, child)``); collapsing passthrough
chains needs the middle node's base to be the semiring's zero and is bit-exact only where
⊗ is exact (see ``docs/performance.md``).
"""

from __future__ import annotations

import numpy as np

from . import _topo


def read_by(edges, n: int, outputs) -> np.ndarray:
    """The nodes ``outputs`` depend on (themselves included): a reverse walk over data
    edges and derive relations. A bool mask over ``0..n-1``."""
    keep = np.zeros(n, bool)
    frontier = np.unique(np.asarray(outputs, np.int64).reshape(-1))
    src = np.concatenate([edges.src, edges.rel_src])
    ptr, order = _topo.csr(np.concatenate([edges.dst, edges.rel_dst]), n)
    while frontier.size:
        keep[frontier] = True
        parents = src[order[_topo.expand_rows(ptr, frontier)]]
        frontier = np.unique(parents[~keep[parents]])
    return keep


def prune(edges, keep: np.ndarray):
    """Rewrite: drop the computation of nodes outside ``keep`` (nodes no output reads). They
    become roots (their value is ``b``); kept nodes compute exactly what they did, with the
    same edges in the same order, under every semiring. ``keep`` must be closed under
    parents (:func:`read_by`)."""
    d = keep[edges.dst] if edges.dst.size else np.zeros(0, bool)
    c = keep[edges.der_child] if edges.der_child.size else np.zeros(0, bool)
    r = keep[edges.rel_dst] if edges.rel_dst.size else np.zeros(0, bool)
    return edges._replace(
        src=edges.src[d], dst=edges.dst[d], pos=edges.pos[d],
        der_child=edges.der_child[c], der_group=edges.der_group[c],
        der_parents=[ps for ps, k in zip(edges.der_parents, c.tolist()) if k],
        rel_src=edges.rel_src[r], rel_dst=edges.rel_dst[r],
    )
