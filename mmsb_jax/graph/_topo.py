"""Host-side (numpy) graph algorithms: CSR, longest-path levels, cycles, topological order.

Everything here works on dense node indices ``0..n-1`` and whole numpy arrays, so a graph of
500k edges is sorted and levelled in tens of milliseconds, with no per-edge Python objects;
deep narrow graphs (a chain of 100k) take their narrow levels in a plain Python loop, which
costs less than a dozen numpy calls per level. The two acyclicity checks of the builder live
here too: Pearce–Kelly for a single insert (:func:`pearce_kelly`) and a level-synchronous
Kahn pass for a bulk insert (:func:`bulk_order`).
"""

from __future__ import annotations

import numpy as np

from .._errors import GraphCycleError

_NARROW = 48  # levels with fewer nodes than this are walked in Python


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
    """Longest-path levels by level-synchronous Kahn, O(V + E).

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
    lv = seen = 0
    ptr_l = dsorted_l = None  # Python mirrors of the CSR, made on the first narrow level
    while frontier.size:
        if frontier.size < _NARROW:  # walk narrow levels in Python until one is wide
            if ptr_l is None:
                ptr_l, dsorted_l = ptr.tolist(), dsorted.tolist()
            fr, walked, depth = frontier.tolist(), [], []
            while fr and len(fr) < _NARROW:
                walked += fr
                depth += [lv] * len(fr)
                nxt = []
                for u in fr:
                    for c in dsorted_l[ptr_l[u] : ptr_l[u + 1]]:
                        d = int(indeg[c]) - 1
                        indeg[c] = d
                        if d == 0:
                            nxt.append(c)
                fr = nxt
                lv += 1
            level[walked] = depth
            seen += len(walked)
            frontier = np.asarray(fr, dtype=np.int64)
            continue
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


def dense_ids(ids: np.ndarray, *arrays: np.ndarray):
    """``(nodes, dense...)``: the sorted unique ids of ``ids`` and ``arrays`` together, and
    each of ``arrays`` as indices into them. A bitmap when the ids are dense enough (no sort)."""
    every = np.concatenate([np.asarray(ids, np.int64), *arrays])
    if every.size == 0:
        return (np.zeros(0, np.int64),) + tuple(np.zeros(0, np.int64) for _ in arrays)
    top = int(every.max())
    if top < 4 * every.size + 1024:
        present = np.zeros(top + 1, bool)
        present[every] = True
        nodes = np.flatnonzero(present)
        index = np.cumsum(present) - 1
        return (nodes,) + tuple(index[a] for a in arrays)
    nodes = np.unique(every)
    return (nodes,) + tuple(np.searchsorted(nodes, a) for a in arrays)


def bulk_order(nodes: np.ndarray, src: np.ndarray, dst: np.ndarray) -> dict[int, int]:
    """A topological order index ``{node: position}`` of all ``nodes`` over the edges.

    One O(V + E) Kahn pass; nodes are ordered by level, then id.

    Raises:
      GraphCycleError: the edges close a cycle (``.cycle`` in node ids).
    """
    nodes, s, d = dense_ids(nodes, np.asarray(src, np.int64), np.asarray(dst, np.int64))
    level, ok = kahn_levels(s, d, nodes.size)
    if not ok:
        raise GraphCycleError(nodes[find_cycle(s, d, level < 0)].tolist())
    order = np.lexsort((nodes, level))
    return dict(zip(nodes[order].tolist(), range(nodes.size)))


def pearce_kelly(order: dict[int, int], children: dict, parents: dict, u: int, v: int) -> None:
    """Keep ``order`` (node -> index) topological after adding the edge ``u -> v``.

    Pearce–Kelly dynamic topological order: when ``order[u] < order[v]`` nothing moves;
    otherwise only the nodes whose index lies between the two endpoints are searched (forward
    from ``v``, backward from ``u``) and the two sets swap their indices. ``u`` and ``v`` must
    already be in ``order``; ``children`` / ``parents`` map a node to an iterable of its
    neighbours (without the new edge).

    Raises:
      GraphCycleError: ``v`` reaches ``u`` (``.cycle`` is the path, ``u`` first and last);
        ``order`` is left unchanged.
    """
    lower, upper = order[v], order[u]
    if upper < lower:
        return
    came = {v: None}  # forward search from v among nodes with index <= upper
    stack = [v]
    forward = []
    while stack:
        x = stack.pop()
        forward.append(x)
        for y in children.get(x, ()):
            if y == u:
                path = [y, x]
                while came[x] is not None:
                    x = came[x]
                    path.append(x)
                raise GraphCycleError([u] + path[::-1])  # u, v ... x, u
            if y not in came and order[y] <= upper:
                came[y] = x
                stack.append(y)
    seen = {u}  # backward search from u among nodes with index >= lower
    stack = [u]
    backward = []
    while stack:
        x = stack.pop()
        backward.append(x)
        for y in parents.get(x, ()):
            if y not in seen and order[y] >= lower:
                seen.add(y)
                stack.append(y)
    backward.sort(key=order.__getitem__)
    forward.sort(key=order.__getitem__)
    moved = backward + forward
    for x, index in zip(moved, sorted(order[x] for x in moved)):
        order[x] = index
