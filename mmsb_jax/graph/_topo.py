"""Host-side (numpy) graph algorithms: CSR, level-synchronous Kahn, cycle extraction.

Everything here works on dense node indices ``0..n-1`` and whole numpy arrays, so a graph of
500k edges is sorted and levelled in tens of milliseconds, with no per-edge Python objects.
"""

from __future__ import annotations

import numpy as np


def csr(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr, order)``: ``order`` sorts ``keys`` stably; row ``i`` is ``order[ptr[i]:ptr[i+1]]``."""
    keys = np.asarray(keys, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=ptr[1:])
    return ptr, order


def expand_rows(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions ``ptr[r] .. ptr[r+1]-1`` of every row in ``rows``, concatenated."""
    start = ptr[rows]
    cnt = ptr[rows + 1] - start
    total = int(cnt.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.cumsum(cnt) - cnt
    return np.repeat(start - offs, cnt) + np.arange(total, dtype=np.int64)


def kahn_levels(src: np.ndarray, dst: np.ndarray, n: int, present: np.ndarray | None = None):
    """Longest-path levels by level-synchronous Kahn, O(V + E) numpy work.

    Args:
      src, dst: edge endpoints as dense indices in ``[0, n)``.
      n: number of dense indices.
      present: optional bool mask of the indices that are nodes (default: all).

    Returns:
      ``(level, ok)``: ``level[i]`` is the longest path length from a source to ``i`` (``-1``
      for nodes left on a cycle or not present); ``ok`` is False when a cycle exists.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    indeg = np.bincount(dst, minlength=n).astype(np.int64)
    ptr, order = csr(src, n)
    dsorted = dst[order]
    level = np.full(n, -1, dtype=np.int64)
    roots = indeg == 0
    if present is not None:
        roots &= present
    frontier = np.flatnonzero(roots)
    lv = 0
    seen = 0
    while frontier.size:
        level[frontier] = lv
        seen += frontier.size
        ch = dsorted[expand_rows(ptr, frontier)]
        if ch.size == 0:
            break
        u, c = np.unique(ch, return_counts=True)
        indeg[u] -= c
        frontier = u[indeg[u] == 0]
        lv += 1
    total = n if present is None else int(present.sum())
    return level, seen == total


def find_cycle(src: np.ndarray, dst: np.ndarray, stuck: np.ndarray) -> list[int]:
    """A cycle (dense indices, first repeated at the end) among the ``stuck`` nodes.

    ``stuck`` is the bool mask of nodes Kahn could not level: each has a parent that is stuck
    too, so following one stuck parent per node must revisit a node.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    m = stuck[src] & stuck[dst]
    parent = {}
    for s, d in zip(src[m].tolist(), dst[m].tolist()):
        parent.setdefault(d, s)
    start = int(np.flatnonzero(stuck)[0])
    pos: dict[int, int] = {}
    walk = []
    v = start
    while v not in pos:
        pos[v] = len(walk)
        walk.append(v)
        v = parent[v]
    back = walk[pos[v]:]  # v <- p1 <- p2 ... (parent order)
    fwd = back[::-1]  # forward edges: fwd[i] -> fwd[i+1]
    # back[0] == v; after reversing, v is last: rotate so the path starts at v.
    fwd = [fwd[-1]] + fwd[:-1]
    return fwd + [fwd[0]]
