"""Incremental propagation (Layer 4): recompute only the dirty cone, with cutoff.

Algorithm (jittable, exact): a frontier of at most ``capacity`` node ids is recomputed per
round (``x[v] = ((b[v] ⊕ c0) ⊕ c1) ...`` over the node's chunks of in-edges, the same chunks
in the same order as :func:`propagate`, or ``fn(*parents)`` for a derived node); the nodes
whose value changed (bit for bit) push their children into the next frontier, deduplicated.
The first frontier is the dirty set, so a node is recomputed only when it is dirty or a
parent changed, and the walk stops where values stop changing. Every array a round touches
is frontier-sized: in-edges and children come from ELL tables whose rows are the mean degree
rounded up to a power of two wide (one row for most nodes; hubs, the nodes with more, take
their further rows in a second, smaller tier), the new frontier is packed by a prefix over
rows and a short one within each row and deduplicated by sorting it, and (from a capacity of
128) a round with at most an eighth of the capacity runs at an eighth of the size. No round
and no call makes a pass over the graph, beyond copying ``x`` and making the ``(N,)``
``changed`` mask once. A node may be recomputed in several rounds (when parents on paths
of different lengths change), always from current parent values, so on a DAG the result is
the fixpoint :func:`propagate` computes. When a round needs more than the capacities, the
call falls back to full propagation (in the same program under ``jit``), so the result is
always exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._compat import is_tracer
from .._errors import InvalidArgumentError
from ..semirings import cast_weights
from ._buckets import ceil_pow2
from ._compiled import CompiledGraph, check_weight_fit
from ._propagate import call_derive, check_pages, fold, gather_rows, propagate, propagate_impl, weights_for_pages


def _prefix(counts):
    """Inclusive prefix sum of a 1-D int array, as int32.

    Blocked: a triangular matmul inside blocks of 64 (float32, exact below 2**24) and a
    recursive prefix over the block totals. On CPU this is several times faster than
    ``jnp.cumsum`` for the few-thousand-element arrays used here.
    """
    n = counts.shape[0]
    if n <= 128:
        return jnp.cumsum(counts.astype(jnp.int32))
    blk = 64
    rows = -(-n // blk)
    f = jnp.zeros(rows * blk, jnp.float32).at[:n].set(counts.astype(jnp.float32)).reshape(rows, blk)
    within = f @ jnp.triu(jnp.ones((blk, blk), jnp.float32))
    offs = _prefix(within[:, -1].astype(jnp.int32)) - within[:, -1].astype(jnp.int32)
    return (within.astype(jnp.int32) + offs[:, None]).reshape(-1)[:n]


def _compact(vals, keep, size: int, fill):
    """The kept ``vals`` packed into ``size`` slots (rest ``fill``), and how many were kept."""
    pos = _prefix(keep) - 1
    cnt = pos[-1] + 1 if vals.shape[0] else jnp.int32(0)
    dest = jnp.where(keep, pos, size)
    out = jnp.full((size,), fill, vals.dtype).at[dest].set(vals, mode="drop", unique_indices=True)
    return out, cnt


def _mask_to_ids(mask, size: int, n: int):
    """Node ids of the set entries of a bool ``(n,)`` mask (two-level, no O(n) prefix)."""
    blk = 32
    nb = -(-n // blk)
    m = jnp.zeros(nb * blk, bool).at[:n].set(mask).reshape(nb, blk)
    bany = m.any(axis=1)
    bids, bcnt = _compact(jnp.arange(nb, dtype=jnp.int32), bany, size, nb)
    sub = m.at[bids].get(mode="fill", fill_value=False)  # (size, blk)
    ids = (bids[:, None] * blk + jnp.arange(blk, dtype=jnp.int32)[None, :]).reshape(-1)
    out, cnt = _compact(ids, sub.reshape(-1), size, n)
    return out, cnt, bcnt > size


def _page_any(a):
    return a.reshape(a.shape[0], -1).any(axis=1) if a.ndim > 1 else a


def differs(a, b):
    """Per page (leading axis): whether ``a`` and ``b`` differ bit for bit (so ``-0.0`` vs
    ``0.0`` differs, and a NaN that stays the same NaN does not)."""
    if jnp.issubdtype(a.dtype, jnp.floating):
        bits = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[a.dtype.itemsize]
        a, b = lax.bitcast_convert_type(a, bits), lax.bitcast_convert_type(b, bits)
    return _page_any(a != b)


def _first_frontier(dirty, size: int, n: int):
    if dirty.dtype == jnp.bool_:
        f0, cnt0, block_ovf = _mask_to_ids(dirty, size, n)
        return f0, cnt0, (cnt0 > size) | block_ovf
    ids = jnp.where((dirty >= 0) & (dirty < n), dirty, n).astype(jnp.int32)
    f0 = jnp.full((size,), n, jnp.int32)
    if ids.shape[0]:
        f0 = f0.at[: min(ids.shape[0], size)].set(ids[:size])
    f0 = jnp.sort(f0)  # valid ids first (a frontier is packed), duplicates side by side
    f0 = jnp.sort(jnp.where(jnp.concatenate([jnp.zeros(1, bool), f0[1:] == f0[:-1]]), n, f0))
    return f0, jnp.sum((f0 < n).astype(jnp.int32)), jnp.asarray(ids.shape[0] > size)


def _pack(mask, size: int, fill: int):
    """Positions of the set entries of ``mask`` packed into ``size`` slots (rest ``fill``),
    and how many there were."""
    return _compact(jnp.arange(mask.shape[0], dtype=jnp.int32), mask, size, fill)


class _Round:
    """One round of the frontier loop at a static frontier size (see the module docstring)."""

    def __init__(self, cg: CompiledGraph, x_old, b_new, size: int, hubs: int):
        self.cg, self.x_old, self.b_new = cg, x_old, b_new
        self.sr = cg.semiring
        self.n = cg.num_nodes
        self.page = x_old.shape[1:]
        self.dt = x_old.dtype
        self.zero = self.sr.zero_for(self.dt)
        self.size, self.hubs = size, hubs
        self.w_in = weights_for_pages(cast_weights(self.sr, cg.in_weights, self.dt), 1, self.page)
        self.in_k = jnp.arange(cg.in_width, dtype=jnp.int32)
        self.out_k = jnp.arange(cg.out_width, dtype=jnp.int32)

    def expand(self, m):
        return m.reshape(m.shape + (1,) * len(self.page))

    def reduce_rows(self, x, rows):
        """⊕ over each in-edge row in ``rows`` (any shape) of ``w ⊗ x[src]``."""
        flat = rows[..., None] * self.cg.in_width + self.in_k.reshape((1,) * rows.ndim + (-1,))
        src, w = lax.optimization_barrier((gather_rows(self.cg.in_src, flat), gather_rows(self.w_in, flat)))
        xs = x.at[src].get(mode="fill", fill_value=self.zero)
        return fold(self.sr, self.sr.mul(w, xs), rows.ndim, self.page)

    def recompute(self, x, f, valid):
        cg, sr = self.cg, self.sr
        start, rows = cg.in_start[f], cg.in_rows[f]  # f == n: the padding entry (no rows)
        new = self.b_new.at[f].get(mode="fill", fill_value=self.zero)
        new = jnp.where(self.expand(rows > 0), sr.add(new, self.reduce_rows(x, start)), new)
        heavy = jnp.any(valid & (rows > cg.in_hub_rows))
        if cg.in_hub_rows > 1:  # hubs: their further rows, ((b ⊕ c0) ⊕ c1) ... as in propagate
            at, count = _pack(rows > 1, self.hubs, self.size)
            heavy = heavy | (count > self.hubs)
            j = jnp.arange(1, cg.in_hub_rows, dtype=jnp.int32)
            more = j[None, :] < cg.in_rows[f.at[at].get(mode="fill", fill_value=self.n)][:, None]
            hub_rows = jnp.where(more, start.at[at].get(mode="fill", fill_value=0)[:, None] + j[None, :], cg.in_pad_row)
            part = self.reduce_rows(x, hub_rows)
            acc = new.at[at].get(mode="fill", fill_value=self.zero)
            for i in range(cg.in_hub_rows - 1):
                acc = jnp.where(self.expand(more[:, i]), sr.add(acc, part[:, i]), acc)
            new = new.at[at].set(acc, mode="drop", unique_indices=True)
        for gid, (fn, arity) in enumerate(cg.derive_fns):
            fc = jnp.where(valid, f, 0)
            isg = valid & (cg.der_group[fc] == gid)

            def run(new, gid=gid, fn=fn, arity=arity, isg=isg, fc=fc):
                par = cg.der_par_ext[gid][cg.der_row[fc]]
                args = [x[par[:, a]] for a in range(arity)]
                return jnp.where(self.expand(isg), call_derive(fn, args, self.size, self.page, self.dt), new)

            new = lax.cond(jnp.any(isg), run, lambda new: new, new)
        return new, heavy

    def children(self, f, moved):
        """Rows of child slots of the moved nodes, and whether any had more than fit."""
        cg = self.cg
        start, rows = cg.out_start[f], cg.out_rows[f]
        kid_rows = jnp.where(moved & (rows > 0), start, cg.out_pad_row)
        heavy = jnp.any(moved & (rows > cg.out_hub_rows))
        if cg.out_hub_rows > 1:
            at, count = _pack(moved & (rows > 1), self.hubs, self.size)
            heavy = heavy | (count > self.hubs)
            j = jnp.arange(1, cg.out_hub_rows, dtype=jnp.int32)
            more = j[None, :] < rows.at[at].get(mode="fill", fill_value=0)[:, None]
            extra = jnp.where(more, start.at[at].get(mode="fill", fill_value=0)[:, None] + j[None, :], cg.out_pad_row)
            kid_rows = jnp.concatenate([kid_rows, extra.reshape(-1)])
        return cg.out_dst[kid_rows[:, None] * cg.out_width + self.out_k[None, :]], heavy

    def __call__(self, state):
        x, changed, f_all, _, ovf, rnd, work = state
        n, full = self.n, f_all.shape[0]
        f = f_all[: self.size]
        valid = f < n
        new, heavy_in = self.recompute(x, f, valid)
        cur = x.at[f].get(mode="fill", fill_value=self.zero)
        moved = differs(new, cur) & valid
        # Writing where(moved, new, cur) (equal values) makes the write depend on every read
        # of x; otherwise XLA copies x to keep it alive for the reads.
        x = x.at[f].set(jnp.where(self.expand(moved), new, cur), mode="drop", unique_indices=True)
        was = self.x_old.at[f].get(mode="fill", fill_value=self.zero)
        changed = changed.at[jnp.where(moved, f, n)].set(differs(new, was), mode="drop")
        kids, heavy_out = self.children(f, moved)  # (rows, out_width), padding n
        # pack the children row by row (a prefix over rows and a short one within each row,
        # not one over every slot), then sort to drop duplicates: no (N,) scratch array
        keep = (kids < n).astype(jnp.int32)
        per_row = jnp.sum(keep, axis=1)
        row_end = _prefix(per_row)
        cols = [jnp.zeros_like(keep[:, 0])]
        for j in range(keep.shape[1] - 1):  # exclusive prefix along the short axis, unrolled
            cols.append(cols[-1] + keep[:, j])
        room = min(kids.size, 2 * full)
        dest = jnp.where(keep > 0, (row_end - per_row)[:, None] + jnp.stack(cols, axis=1), room)
        packed = jnp.full((room,), n, jnp.int32).at[dest.reshape(-1)].set(kids.reshape(-1), mode="drop", unique_indices=True)
        packed = jnp.sort(packed)
        dup = jnp.concatenate([jnp.zeros(1, bool), packed[1:] == packed[:-1]])
        packed = jnp.sort(jnp.where(dup, n, packed))
        count = jnp.sum((packed < n).astype(jnp.int32))
        f_next = packed[:full] if room >= full else jnp.concatenate([packed, jnp.full((full - room,), n, jnp.int32)])
        ovf = ovf | heavy_in | heavy_out | (row_end[-1] > room) | (count > full)
        work = work + jnp.sum(valid.astype(jnp.int32))
        return x, changed, f_next, count, ovf, rnd + 1, work


def _incremental_impl(cg: CompiledGraph, x_old, b_new, dirty, capacity: int, hub_capacity: int, mode: str = "fallback"):
    n = cg.num_nodes
    small = capacity // 8 if capacity >= 128 else capacity  # small rounds pay off on big frontiers only
    hubs = max(1, min(hub_capacity, capacity))
    big = _Round(cg, x_old, b_new, capacity, hubs)
    little = _Round(cg, x_old, b_new, small, max(1, min(hubs, small // 4)))

    def going(state):
        _, _, _, count, ovf, rnd, _ = state
        return (count > 0) & ~ovf & (rnd < cg.max_rounds)

    if small == capacity:
        loop = lambda state: lax.while_loop(going, big, state)  # noqa: E731
    else:
        # Rounds of at most `small` nodes run at that size. Two inner loops rather than a
        # lax.cond per round: XLA copies every (N,) array a conditional branch updates.
        def outer(state):
            state = lax.while_loop(lambda st: going(st) & (st[3] <= small), little, state)
            return lax.while_loop(lambda st: going(st) & (st[3] > small), big, state)

        loop = lambda state: lax.while_loop(going, outer, state)  # noqa: E731

    f0, count0, ovf0 = _first_frontier(dirty, capacity, n)
    state = (x_old, jnp.zeros((n,), bool), f0, count0, ovf0, jnp.int32(0), jnp.int32(0))
    x, changed, _, count, ovf, rounds, work = loop(state)
    ovf = ovf | (count > 0)
    if mode == "stats":  # for benchmarks and tests: how the loop went
        return {"rounds": rounds, "overflow": ovf, "recomputed": work}
    if mode == "flag":  # the caller falls back to full propagation when ovf is set
        return x, changed, ovf

    def full(_):
        xf = propagate_impl(cg, b_new)
        return xf, differs(xf, x_old)

    return lax.cond(ovf, full, lambda _: (x, changed), None)


_incremental_jit = jax.jit(_incremental_impl, static_argnums=(4, 5, 6))
_differs_jit = jax.jit(differs)


def default_capacity(cg: CompiledGraph) -> tuple[int, int]:
    """``(capacity, hub_capacity)`` sized to the graph: frontier slots grow with the node
    count (32..256; from 128 on, a round of at most an eighth of that runs at an eighth of the
    cost), hub slots are an eighth of them."""
    size = int(min(256, max(32, ceil_pow2(max(cg.num_nodes, 1) // 400))))
    return size, max(1, size // 8)


def propagate_incremental(cg: CompiledGraph, x_old, b_new, dirty, *, capacity: int | None = None, hub_capacity: int | None = None):
    """Update a propagated ``x_old`` after the bases of the ``dirty`` nodes changed.

    Recomputes only nodes that are dirty or have a parent whose value changed, stopping where
    values stop changing (cutoff); its cost follows the dirty cone, not the graph. The result
    equals ``propagate(cg, b_new)``, bit for bit under the idempotent semirings (tropical,
    max-plus, boolean, max-times on its domain x >= 0) and on integer pages of every semiring
    (integer ⊕ is exactly associative); under real and log on float pages the two programs may
    differ in the last bit (XLA may contract ``b + w * x`` into an FMA in one and not the
    other, and reductions may associate differently), so the state store propagates those with
    full passes.

    After an edit of the graph's edges into ``child`` (added, removed or re-weighted), the
    cone of that edit is ``child``'s: ``propagate_incremental(new_cg, x_old, b, dirty=[child])``
    (``x_old`` propagated on the old graph, ``b`` unchanged) is exact, because every node
    outside the cone keeps its inputs, and therefore its value.

    Works under ``jit`` and ``vmap`` (it is a forward computation: use :func:`propagate`
    for gradients). Called eagerly, it reads one overflow flag back to the host and runs
    :func:`propagate` when the capacities were exceeded; under ``jit`` that fallback is a
    ``lax.cond`` inside the program.

    Args:
      cg: the compiled graph.
      x_old: ``propagate(cg_old, b_old)`` on this graph or on one that differs from it only
        in edges into the ``dirty`` nodes.
      b_new: new bases; equal to ``b_old`` outside ``dirty``.
      dirty: a 1-D int array of node ids (the fast way: no pass over a mask), or a bool
        ``(num_nodes,)`` mask. Ids outside ``[0, num_nodes)`` raise, or under ``jit`` are
        ignored.
      capacity: most nodes recomputed per round (static; default grows with the graph,
        32..256). A round that needs more falls back to full propagation, exactly.
      hub_capacity: most hubs per round (static; default ``capacity // 8``): nodes with more
        in-edges or children than one row of the graph's tables (``cg.in_width`` /
        ``cg.out_width``, about twice the mean degree). Nodes with more than
        ``cg.in_hub_rows`` / ``cg.out_hub_rows`` rows always take the full-pass fallback.

    Returns:
      ``(x, changed)``: the new values and a bool ``(num_nodes,)`` mask of the nodes whose
      value differs from ``x_old`` bit for bit.

    Raises:
      InvalidArgumentError: pages of the wrong shape or dtype, ``x_old`` and ``b_new`` that
        differ in shape or dtype, a bad ``dirty``, or capacities below 1.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> from mmsb_jax.graph import ShadowPageGraph, propagate, propagate_incremental
      >>> g = ShadowPageGraph(); g.add_dependencies([0, 1], [1, 2])
      >>> cg = g.compile(semirings.REAL, num_nodes=3)
      >>> x = propagate(cg, jnp.array([1.0, 0.0, 0.0]))
      >>> x2, changed = propagate_incremental(cg, x, jnp.array([1.0, 2.0, 0.0]), jnp.array([1]))
      >>> x2.tolist(), changed.tolist()
      ([1.0, 3.0, 3.0], [False, True, True])
    """
    x_old = check_pages(cg, x_old, "x_old")
    b_new = check_pages(cg, b_new, "b_new")
    if x_old.shape != b_new.shape or x_old.dtype != b_new.dtype:
        raise InvalidArgumentError(f"x_old and b_new must match: {x_old.shape=} {x_old.dtype=} vs {b_new.shape=} {b_new.dtype=}")
    check_weight_fit(cg, b_new.dtype)
    if not isinstance(dirty, jax.Array):
        dirty = jnp.asarray(dirty)
    if dirty.dtype == jnp.bool_:
        if dirty.shape != (cg.num_nodes,):
            raise InvalidArgumentError(f"dirty must be a bool mask of shape ({cg.num_nodes},), got {dirty.shape=}")
    elif not (jnp.issubdtype(dirty.dtype, jnp.integer) and dirty.ndim == 1):
        raise InvalidArgumentError(f"dirty must be a bool mask or a 1-D int array of node ids, got {dirty.dtype=} {dirty.shape=}")
    elif dirty.size and not is_tracer(dirty):  # concrete ids are checked (traced ones outside [0, n) are ignored)
        ids = np.asarray(dirty)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cg.num_nodes:
            raise InvalidArgumentError(f"dirty holds node id {lo if lo < 0 else hi}, outside [0, {cg.num_nodes})")
    size0, _ = default_capacity(cg)
    size = int(capacity) if capacity else size0
    hubs = int(hub_capacity) if hub_capacity else max(1, size // 8)
    if size < 1 or hubs < 1:
        raise InvalidArgumentError(f"capacities must be positive, got {capacity=} {hub_capacity=}")
    key = cg.program_key()
    traced = any(is_tracer(a) for a in (cg.weights, cg.in_src, x_old, b_new, dirty))
    if traced:
        return _incremental_jit(key, x_old, b_new, dirty, size, hubs, "fallback")
    x, changed, ovf = _incremental_jit(key, x_old, b_new, dirty, size, hubs, "flag")
    if bool(ovf):  # a round outgrew the capacities: the full pass is exact (and cheaper now)
        x = propagate(cg, b_new)
        changed = _differs_jit(x, x_old)
    return x, changed
