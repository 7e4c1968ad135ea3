"""Compile planning: the host-side (numpy) layout of a :class:`CompiledGraph`.

:func:`plan` runs named stages, each a function of the previous ones' results:

1. :func:`edges_of` — data edges (with their positions in ``g.edges()``) and derive relations
   (with ``outputs``, only those the outputs read: :func:`._rewrite.prune`);
2. :func:`node_levels` — longest-path levels over data and derive relations;
3. :func:`block_shape` — ``(rows, width)`` of every step, from bucketed graph statistics;
4. :func:`row_order` — internal rows: level by level, parents before children;
5. :func:`chunk_rows` — each node's in-edges cut into chunks of ``width`` (most nodes: one);
6. :func:`ell_steps` / :func:`derive_steps` — the step program over internal rows;
7. :func:`incremental_tables` — node-id ELL tables (in-edges, children) for incremental propagation.

The layout. Nodes are renumbered level by level ("internal rows"). A step updates ``rows``
consecutive internal rows of one level: ``x[r] = x[r] ⊕ ⨁_k w[k, r] ⊗ x[src[k, r]]``, with
its ``width * rows`` edge slots stored as a ``(width, rows)`` block (padding: a zero-valued
row and weight one). ``x`` starts as ``b``, so a node of in-degree ``d`` takes its edges in
``ceil(d / width)`` chunks, in consecutive steps of its level (``((b ⊕ c0) ⊕ c1) ⊕ ...``);
within a level rows are sorted by chunk count, so the rows of chunk ``j`` are a prefix and
every step writes one contiguous block. Every step has the same shape, so the program is one
loop body however deep the graph is; a derived node's step calls its function instead.

Hubs. A node with many chunks (in a power-law graph: thousands of in-edges) would take one
step per chunk, each nearly empty. Where that wastes many steps (:func:`hubs_pay`), hubs
(more than ``hub_chunks(rows) / 4`` chunks) come first among their level's reduced rows and
go through *hub steps*: the block's ``rows``
columns are ``rows / H`` hubs x ``H`` consecutive chunks (``H = hub_chunks(rows)``); the step
reduces every chunk as an ordinary step does and folds them into the hub's value in chunk
order, so a hub still computes ``((b ⊕ c0) ⊕ c1) ⊕ ...`` — in ``ceil(chunks / H)`` steps.

Every size that reaches a jitted program (steps, chunk rows, weights, out-edges, the block
shape itself) is a function of bucketed counts (:mod:`._buckets`), so an edit inside a bucket
compiles to arrays of the same shapes and the same static metadata.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from . import _rewrite, _topo
from ._buckets import ceil_pow2, ceil_quarter_pow2

DATA_CODE = 0  # the builder's type code of "data" edges (the only ones that carry values)

_SLOTS_PER_STEP = 2048  # width * rows of a step, at most (measured on CPU: see bench_graph)
_MAX_WIDTH = 64
_HUB_CHUNKS = 32  # chunks of one hub a hub step takes (at most; rows / hub_chunks hubs per step)


def hub_chunks(rows: int) -> int:
    """Chunks per hub in a hub step: ``min(rows, 32)``, or 0 (no hub steps) when a step has
    fewer than 8 rows. A node with more than a quarter of that many chunks is a *hub*: all
    its chunks go through hub steps, ``hub_chunks`` at a time, instead of one step each."""
    h = min(rows, _HUB_CHUNKS)
    return h if h >= 8 else 0


class Edges(NamedTuple):
    """Stage 1: what the compiled program is built from (node ids, edge positions)."""

    src: np.ndarray  # data edges: source node ids
    dst: np.ndarray  # ... destination node ids
    pos: np.ndarray  # ... position in g.edges() (the order with_weights expects)
    weight: np.ndarray  # every live edge's weight, float64, NaN = the semiring's one
    num_edges: int  # live edges of every type
    der_child: np.ndarray  # derived nodes
    der_group: np.ndarray  # their group (one per (fn, arity))
    der_parents: list  # their parents (tuples of node ids)
    groups: tuple  # ((fn, arity), ...) by group id
    rel_src: np.ndarray  # derive relations parent -> child (ordering only)
    rel_dst: np.ndarray


def edges_of(g) -> Edges:
    """Stage 1: data edges and derive relations of the builder ``g``."""
    ea = g.edge_arrays()
    data = np.flatnonzero(ea["type_code"] == DATA_CODE)
    derived = g.derived()
    keys: dict = {}
    der_child = np.fromiter(derived, np.int64, len(derived))
    der_group = np.zeros(der_child.size, np.int64)
    der_parents = []
    for i, (fn, parents) in enumerate(derived.values()):
        der_group[i] = keys.setdefault((fn, len(parents)), len(keys))
        der_parents.append(tuple(parents))
    rel_src = np.fromiter((p for ps in der_parents for p in ps), np.int64)
    rel_dst = np.repeat(der_child, [len(p) for p in der_parents]).astype(np.int64)
    return Edges(
        src=ea["src"][data], dst=ea["dst"][data], pos=data.astype(np.int64),
        weight=np.where(ea["default_weight"], np.nan, ea["weight"]), num_edges=int(ea["src"].size),
        der_child=der_child, der_group=der_group, der_parents=der_parents, groups=tuple(keys),
        rel_src=rel_src, rel_dst=rel_dst,
    )


def node_levels(edges: Edges, n: int) -> np.ndarray:
    """Stage 2: longest-path level of every node ``0..n-1`` over data and derive relations."""
    level, ok = _topo.kahn_levels(np.concatenate([edges.src, edges.rel_src]), np.concatenate([edges.dst, edges.rel_dst]), n)
    assert ok, "graph builder invariant broken: cycle"
    return level


def block_shape(num_computed: int, num_data_edges: int, depth: int) -> tuple[int, int]:
    """Stage 3: ``(rows, width)`` of a step, from bucketed counts only.

    ``width`` is the mean in-degree rounded up to a power of two (most nodes fit one chunk;
    the rest take more steps of their level); ``rows`` the mean number of nodes per level
    rounded up to a power of two, so small or deep graphs get small blocks, capped at
    ``_SLOTS_PER_STEP / width``. Measured on CPU (``benchmarks/bench_graph.py``): a step's
    cost is mostly its slots (under ``jax.grad`` too, where every slot is a residual and a
    scatter-add), so blocks sized to the mean beat blocks sized to the largest level or
    in-degree even though they take more steps.
    """
    if num_computed == 0:
        return 1, 1
    nb, eb, db = (ceil_quarter_pow2(v) for v in (num_computed, max(num_data_edges, 1), max(depth, 1)))
    width = min(ceil_pow2(-(-eb // nb)), _MAX_WIDTH)
    rows = max(1, min(ceil_pow2(-(-nb // db)), _SLOTS_PER_STEP // width))
    return rows, width


def row_order(level, kind, chunks, group) -> tuple[np.ndarray, np.ndarray]:
    """Stage 4: ``(perm, inv)``: internal row -> node id and back.

    Order: level, then kind (0 roots, 1 reduced nodes, 2 derived), then chunk count
    (descending), derive group, id.
    """
    n = level.size
    ids = np.arange(n, dtype=np.int64)
    perm = np.lexsort((ids, group, -chunks, kind, level))
    inv = np.empty(n, np.int64)
    inv[perm] = ids
    return perm, inv


class Chunks(NamedTuple):
    """Stage 5: one entry per chunk row ``(node, j)``, in internal-row order."""

    node: np.ndarray  # node id
    row: np.ndarray  # its internal row
    j: np.ndarray  # chunk index within the node
    src: np.ndarray  # (C, width) source node ids (padding: -1)
    pos: np.ndarray  # (C, width) edge positions in g.edges() (padding: -1)


def chunk_rows(edges: Edges, perm: np.ndarray, chunks: np.ndarray, width: int) -> Chunks:
    """Stage 5: cut every reduced node's in-edges (insertion order) into chunks of ``width``."""
    n = perm.size
    in_ptr, in_order = _topo.csr(edges.dst, n)
    rows = np.flatnonzero(chunks[perm] > 0)  # internal rows with data parents
    nodes = perm[rows]
    cnt = chunks[nodes]
    node = np.repeat(nodes, cnt)
    row = np.repeat(rows, cnt)
    j = np.arange(node.size, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    k = np.arange(width, dtype=np.int64)[None, :]
    at = in_ptr[node][:, None] + j[:, None] * width + k
    valid = at < in_ptr[node + 1][:, None]
    at = np.where(valid, at, 0)
    src = np.where(valid, edges.src[in_order][at] if edges.src.size else 0, -1)
    pos = np.where(valid, edges.pos[in_order][at] if edges.pos.size else 0, -1)
    return Chunks(node=node, row=row, j=j, src=src, pos=pos)


class Steps(NamedTuple):
    """Stage 6: the step program (unpadded), in execution order."""

    row0: np.ndarray  # first internal row written
    count: np.ndarray  # valid rows (the rest of the block is left as it is)
    kind: np.ndarray  # 0: reduce; 1 + g: derive group g; 1 + groups: hub step
    poff: np.ndarray  # offset into der_par (derive steps)
    ell_src: np.ndarray  # (S, width, rows) internal source rows (padding: -1)
    ell_pos: np.ndarray  # (S, width, rows) edge positions (padding: -1)
    der_par: np.ndarray  # flat internal parent rows of derive steps


def _first_rows(level, perm, rows_of_kind) -> np.ndarray:
    """The first internal row of each level among ``rows_of_kind`` (contiguous per level)."""
    first = np.zeros(int(level.max()) + 1, np.int64)
    first[level[perm[rows_of_kind]][::-1]] = rows_of_kind[::-1]
    return first


def ell_steps(chunks: Chunks, level, perm, inv, kind_of_row, rows: int, width: int, hub=None):
    """Stage 6a: reduce steps: chunk ``j`` of a level's reduced rows that are not hubs
    (``hub``: per internal row), ``rows`` at a time.

    Returns ``(sort_keys, row0, count, ell_src, ell_pos)``; keys ``(level, 0, j, block)``.
    """
    if hub is not None:
        keep = ~hub[chunks.row]
        chunks = Chunks(*(a[keep] for a in chunks))
    if chunks.node.size == 0:
        empty = np.zeros(0, np.int64)
        blocks = np.zeros((0, width, rows), np.int64)
        return np.zeros((0, 4), np.int64), empty, empty, blocks, blocks
    lv = level[chunks.node]
    plain = np.flatnonzero((kind_of_row == 1) & (True if hub is None else ~hub))
    first = _first_rows(level, perm, plain)  # the first non-hub reduced row of each level
    p = chunks.row - first[lv]  # position among the level's non-hub reduced rows
    blk = p // rows
    n_j, n_blk = int(chunks.j.max()) + 1, int(blk.max()) + 1
    flat, step_of = np.unique((lv * n_j + chunks.j) * n_blk + blk, return_inverse=True)  # (level, j, block) order
    step_of = step_of.reshape(-1)
    uniq = np.stack([flat // (n_j * n_blk), np.zeros_like(flat), flat // n_blk % n_j, flat % n_blk], axis=1)
    s = uniq.shape[0]
    row0 = first[uniq[:, 0]] + uniq[:, 3] * rows
    count = np.bincount(step_of, minlength=s)
    col = p - blk * rows
    ell_src = np.full((s, width, rows), -1, np.int64)
    ell_pos = np.full((s, width, rows), -1, np.int64)
    internal = np.where(chunks.src >= 0, inv[np.maximum(chunks.src, 0)], -1)
    k = np.arange(width)[None, :]
    ell_src[step_of[:, None], k, col[:, None]] = internal
    ell_pos[step_of[:, None], k, col[:, None]] = chunks.pos
    return uniq, row0, count, ell_src, ell_pos


def _group_steps(level_of, group, rows: int) -> int:
    """Steps of blocks of ``rows`` over entries grouped by ``(level, group)``."""
    if level_of.size == 0:
        return 0
    _, count = np.unique(level_of * (int(group.max()) + 1) + group, return_counts=True)
    return int((-(-count // rows)).sum())


def hubs_pay(chunks: Chunks, level, hub, rows: int, h: int) -> bool:
    """Whether hub steps save at least a quarter of the steps (and 64): only then is their
    branch (compile time, a second gather in the loop body) worth it."""
    lv, on_hub = level[chunks.node], hub[chunks.row]
    plain = _group_steps(lv, chunks.j, rows)
    first = np.unique(np.stack([lv[on_hub], chunks.j[on_hub] // h, chunks.row[on_hub]]), axis=1)  # (level, group, hub)
    with_hubs = _group_steps(lv[~on_hub], chunks.j[~on_hub], rows) + _group_steps(first[0], first[1], rows // h)
    return plain - with_hubs >= max(64, plain // 4)


def hub_steps(chunks: Chunks, level, perm, inv, hub, rows: int, width: int, h: int):
    """Stage 6c: hub steps: chunks ``g*h .. g*h+h-1`` of a level's hubs, ``rows // h`` hubs
    at a time; column ``r * h + j`` of a block holds chunk ``g*h + j`` of the block's hub
    ``r``.

    Returns ``(sort_keys, row0, count, ell_src, ell_pos)``; keys ``(level, 2, g, block)``.
    """
    sel = np.flatnonzero(hub[chunks.row]) if chunks.node.size else np.zeros(0, np.int64)
    if sel.size == 0:
        empty = np.zeros(0, np.int64)
        blocks = np.zeros((0, width, rows), np.int64)
        return np.zeros((0, 4), np.int64), empty, empty, blocks, blocks
    node, row, j = chunks.node[sel], chunks.row[sel], chunks.j[sel]
    lv = level[node]
    first = _first_rows(level, perm, np.flatnonzero(hub))  # a level's hubs are its first reduced rows
    per = rows // h
    p = row - first[lv]  # position among the level's hubs
    g, blk, r, jj = j // h, p // per, p % per, j % h
    n_g, n_blk = int(g.max()) + 1, int(blk.max()) + 1
    flat, step_of = np.unique((lv * n_g + g) * n_blk + blk, return_inverse=True)
    step_of = step_of.reshape(-1)
    uniq = np.stack([flat // (n_g * n_blk), np.full_like(flat, 2), flat // n_blk % n_g, flat % n_blk], axis=1)
    s = uniq.shape[0]
    row0 = first[uniq[:, 0]] + uniq[:, 3] * per
    count = np.zeros(s, np.int64)
    np.maximum.at(count, step_of, r + 1)  # hubs are sorted by chunks: the valid ones are a prefix
    ell_src = np.full((s, width, rows), -1, np.int64)
    ell_pos = np.full((s, width, rows), -1, np.int64)
    src = chunks.src[sel]
    internal = np.where(src >= 0, inv[np.maximum(src, 0)], -1)
    col = r * h + jj
    k = np.arange(width)[None, :]
    ell_src[step_of[:, None], k, col[:, None]] = internal
    ell_pos[step_of[:, None], k, col[:, None]] = chunks.pos[sel]
    return uniq, row0, count, ell_src, ell_pos


def derive_steps(edges: Edges, level, inv, rows: int):
    """Stage 6b: derive steps: a level's derived rows of one group, ``rows`` at a time.

    Returns ``(sort_keys, row0, count, kind, poff, der_par)``; keys ``(level, 1, group, block)``.
    """
    keys, row0, count, kind, poff, parts = [], [], [], [], [], []
    offset = 0
    if edges.der_child.size:
        r = inv[edges.der_child]
        order = np.argsort(r, kind="stable")  # derived rows are contiguous per (level, group)
        child, gid, pars = edges.der_child[order], edges.der_group[order], [edges.der_parents[i] for i in order]
        r = r[order]
        lv = level[child]
        bounds = np.flatnonzero((np.diff(lv) != 0) | (np.diff(gid) != 0)) + 1
        for a, b in zip(np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [child.size]]).tolist()):
            arity = len(pars[a])
            for blk, s0 in enumerate(range(a, b, rows)):
                used = min(rows, b - s0)
                par = inv[np.asarray(pars[s0 : s0 + used], np.int64)]
                par = np.concatenate([par, np.repeat(par[:1], rows - used, axis=0)])
                keys.append((int(lv[a]), 1, int(gid[a]), blk))
                row0.append(int(r[s0]))
                count.append(used)
                kind.append(1 + int(gid[a]))
                poff.append(offset)
                parts.append(par.reshape(-1))
                offset += rows * arity
    arr = lambda v: np.asarray(v, np.int64)  # noqa: E731
    der_par = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return np.asarray(keys, np.int64).reshape(-1, 4), arr(row0), arr(count), arr(kind), arr(poff), der_par


@dataclasses.dataclass
class Plan:
    """Everything :func:`~mmsb_jax.graph.compile_graph` needs, as unpadded numpy arrays."""

    n: int
    edges: Edges
    level: np.ndarray
    perm: np.ndarray
    inv: np.ndarray
    rows: int
    width: int
    steps: Steps
    chunks: Chunks
    node_chunks: np.ndarray  # chunks per node (0: root or derived)
    groups: tuple
    group: np.ndarray  # derive group per node (-1: not derived)
    depth: int
    hub_chunks: int = 0  # chunks per hub of a hub step (0: no hub steps; see hub_chunks())


class NodeKeys(NamedTuple):
    """Stages 1-3 per node: what :func:`row_order` sorts internal rows by (and a layout may
    follow, :mod:`mmsb_jax.adaptive`)."""

    edges: Edges
    level: np.ndarray
    kind: np.ndarray  # 0 roots, 1 reduced nodes, 2 derived
    chunks: np.ndarray  # chunks per node (0: root or derived)
    group: np.ndarray  # derive group per node (-1: not derived)
    rows: int
    width: int
    depth: int


def node_keys(g, n: int, outputs=None) -> NodeKeys:
    """Stages 1-3 for the builder ``g`` over nodes ``0..n-1`` (with ``outputs``: only what
    they read, :func:`._rewrite.prune`)."""
    edges = edges_of(g)
    if outputs is not None:
        edges = _rewrite.prune(edges, _rewrite.read_by(edges, n, outputs))
    level = node_levels(edges, n)
    indeg = np.bincount(edges.dst, minlength=n)
    group = np.full(n, -1, np.int64)
    group[edges.der_child] = edges.der_group
    kind = np.where(group >= 0, 2, np.where(indeg > 0, 1, 0))
    computed = kind > 0
    depth = int(level[computed].max()) if computed.any() else 0
    rows, width = block_shape(int((kind == 1).sum()), int(edges.src.size), depth)
    chunks = np.where(kind == 1, -(-indeg // width), 0)
    return NodeKeys(edges, level, kind, chunks, group, rows, width, depth)


def plan(g, n: int, outputs=None) -> Plan:
    """Run stages 1-6 for the builder ``g`` over nodes ``0..n-1`` (``outputs``: see
    :func:`._rewrite.prune`)."""
    edges, level, kind, node_chunks, group, rows, width, depth = node_keys(g, n, outputs)
    perm, inv = row_order(level, kind, node_chunks, group)
    chunks = chunk_rows(edges, perm, node_chunks, width)
    kind_of_row = kind[perm]
    h = hub_chunks(rows)
    hub = (kind_of_row == 1) & (node_chunks[perm] > h // 4) if h else np.zeros(n, bool)
    if hub.any() and not hubs_pay(chunks, level, hub, rows, h):
        hub[:] = False  # a hub branch costs compile time: only where it saves many steps
    ekeys, erow0, ecount, ell_src, ell_pos = ell_steps(chunks, level, perm, inv, kind_of_row, rows, width, hub)
    hkeys, hrow0, hcount, hub_src, hub_pos = hub_steps(chunks, level, perm, inv, hub, rows, width, h)
    dkeys, drow0, dcount, dkind, dpoff, der_par = derive_steps(edges, level, inv, rows)
    keys = np.concatenate([ekeys, hkeys, dkeys])
    order = np.lexsort(keys.T[::-1]) if keys.size else np.zeros(0, np.int64)
    s_ell, s_hub, s_der = erow0.size, hrow0.size, drow0.size
    hub_kind = 1 + len(edges.groups)  # after the derive groups' kinds
    blk_src = np.concatenate([ell_src, hub_src, np.full((s_der, width, rows), -1, np.int64)])[order]
    blk_pos = np.concatenate([ell_pos, hub_pos, np.full((s_der, width, rows), -1, np.int64)])[order]
    steps = Steps(
        row0=np.concatenate([erow0, hrow0, drow0])[order],
        count=np.concatenate([ecount, hcount, dcount])[order],
        kind=np.concatenate([np.zeros(s_ell, np.int64), np.full(s_hub, hub_kind, np.int64), dkind])[order],
        poff=np.concatenate([np.zeros(s_ell + s_hub, np.int64), dpoff])[order],
        ell_src=blk_src,
        ell_pos=blk_pos,
        der_par=der_par,
    )
    return Plan(
        n=n, edges=edges, level=level, perm=perm, inv=inv, rows=rows, width=width, steps=steps,
        chunks=chunks, node_chunks=node_chunks, groups=edges.groups, group=group, depth=depth,
        hub_chunks=h if s_hub else 0,
    )


class IncrementalTables(NamedTuple):
    """Stage 7: node-id tables of incremental propagation (unpadded).

    In-edges and children are both kept as ELL chunk rows (node-major, ``width`` slots, the
    slots past a node's degree are padding ``-1``), so a frontier gathers them with fixed
    shapes and no prefix sums; a node with more than one chunk row is a hub.
    """

    in_width: int
    in_start: np.ndarray  # (n,) first chunk row of each node (0 when it has none)
    in_rows: np.ndarray  # (n,) chunk rows of each node (0: root or derived)
    in_src: np.ndarray  # (C, in_width) source node ids (padding: -1)
    in_pos: np.ndarray  # (C, in_width) edge positions (padding: -1)
    out_width: int
    out_start: np.ndarray  # (n,) first child chunk row (data and derive relations)
    out_rows: np.ndarray  # (n,) child chunk rows of each node
    out_dst: np.ndarray  # (Co, out_width) children (padding: -1)
    der_row: np.ndarray  # (n,) row of each derived node in its group's tables
    der_nodes: list  # per group: node ids
    der_parents: list  # per group: (rows, arity) parent node ids


def ell_table(keys: np.ndarray, cols: list, n: int, width: int):
    """Rows of ``width`` slots per key ``0..n-1`` (in the order of ``keys``' occurrences).

    Returns ``(start, rows, tables)``: each key's first row and row count, and one
    ``(R, width)`` table per column of ``cols`` (padding ``-1``).
    """
    ptr, order = _topo.csr(keys, n)
    deg = np.diff(ptr)
    rows = -(-deg // width)
    start = np.zeros(n, np.int64)
    start[1:] = np.cumsum(rows)[:-1]
    total = int(rows.sum())
    at = np.arange(keys.size, dtype=np.int64) - np.repeat(ptr[:-1], deg)  # rank within the key
    flat = np.repeat(start * width, deg) + at
    tables = []
    for col in cols:
        t = np.full(total * width, -1, np.int64)
        t[flat] = col[order]
        tables.append(t.reshape(total, width))
    return start, rows, tables


def _width(total: int, keys: int) -> int:
    """The mean degree, bucketed and rounded up to a power of two (1..64): the width rule
    of :func:`block_shape`, so the in-edge table cuts a node's edges into the same chunks."""
    if keys == 0:
        return 1
    return min(64, ceil_pow2(-(-ceil_quarter_pow2(max(total, 1)) // ceil_quarter_pow2(keys))))


def incremental_tables(p: Plan) -> IncrementalTables:
    """Stage 7: in-edge and child chunk rows (node ids) and the derive tables.

    The widths are the mean in- / out-degree (over nodes that have any), bucketed and
    rounded up to a power of two, as in :func:`block_shape`: the in-edge rows are the steps'
    chunks, in the same order, so incremental and full propagation associate ⊕ alike.
    """
    n = p.n
    e = p.edges
    has_in = np.bincount(e.dst, minlength=n) > 0
    in_width = _width(e.dst.size, int(has_in.sum()))
    in_start, in_rows, (in_src, in_pos) = ell_table(e.dst, [e.src, e.pos], n, in_width)
    osrc = np.concatenate([e.src, e.rel_src])
    odst = np.concatenate([e.dst, e.rel_dst])
    has_out = np.bincount(osrc, minlength=n) > 0
    out_width = _width(osrc.size, int(has_out.sum()))
    out_start, out_rows, (out_dst,) = ell_table(osrc, [odst], n, out_width)
    der_row = np.zeros(n, np.int64)
    der_nodes, der_parents = [], []
    for gid in range(len(p.groups)):
        m = e.der_group == gid
        kids = e.der_child[m]
        der_row[kids] = np.arange(kids.size)
        der_nodes.append(kids)
        der_parents.append(np.asarray([e.der_parents[i] for i in np.flatnonzero(m)], np.int64))
    return IncrementalTables(
        in_width=in_width, in_start=in_start, in_rows=in_rows, in_src=in_src, in_pos=in_pos,
        out_width=out_width, out_start=out_start, out_rows=out_rows, out_dst=out_dst,
        der_row=der_row, der_nodes=der_nodes, der_parents=der_parents,
    )
