"""Incremental propagation (Layer 4): recompute only the dirty cone, with cutoff.

Algorithm (jittable, exact): a frontier of at most ``capacity`` node ids is recomputed per
round (``x[v] = ((b[v] ⊕ c0) ⊕ c1) ...`` over the node's chunks of in-edges, the same chunks
in the same order as :func:`propagate`, or ``fn(*parents)`` for a derived node); the nodes
whose value changed (bit for bit) push their children into the next frontier, deduplicated.
The first frontier is the dirty set, so a node is recomputed only when it is dirty or a
parent changed, and the walk stops where values stop changing. Every array a round touches
is frontier-sized (``capacity`` nodes, their chunk rows, ``edge_capacity`` child slots): no
round and no call makes a pass over the graph, beyond copying ``x`` and the ``(N,)``
bookkeeping arrays once. A node may be recomputed in several rounds (when parents on paths
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
from ._propagate import call_derive, check_pages, propagate, propagate_impl, weights_for_pages


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
    return f0, jnp.sum((f0 < n).astype(jnp.int32)), jnp.asarray(ids.shape[0] > size)


def _incremental_impl(cg: CompiledGraph, x_old, b_new, dirty, capacity: int, edge_capacity: int, mode: str = "fallback"):
    sr = cg.semiring
    n = cg.num_nodes
    page = x_old.shape[1:]
    dt = x_old.dtype
    size, slots_cap = capacity, edge_capacity
    width, max_chunks = cg.width, cg.max_chunks
    zero = sr.zero_for(dt)
    w_in = weights_for_pages(cast_weights(sr, cg.in_weights, dt), 1, page)
    pad_slot = cg.in_src.shape[0] - 1  # the last chunk row is always padding
    chunk_j = jnp.arange(max_chunks, dtype=jnp.int32)
    slot_k = jnp.arange(width, dtype=jnp.int32)
    slots = jnp.arange(slots_cap, dtype=jnp.int32)
    expand = lambda m: m.reshape(m.shape + (1,) * len(page))  # noqa: E731

    def recompute(x, f, valid):
        fc = jnp.where(valid, f, 0)
        nch = jnp.where(valid, cg.in_chunks[fc], 0)
        rowmask = chunk_j[None, :] < nch[:, None]  # (size, J)
        flat = (cg.in_start[fc][:, None] + chunk_j[None, :])[..., None] * width + slot_k[None, None, :]
        flat = jnp.where(rowmask[..., None], flat, pad_slot)  # (size, J, K)
        src = cg.in_src[flat]
        xs = x.at[src].get(mode="fill", fill_value=zero)
        part = sr.reduce(sr.mul(w_in[flat], xs), 2)  # (size, J, *page): one value per chunk
        new = b_new.at[f].get(mode="fill", fill_value=zero)
        for j in range(max_chunks):  # ((b ⊕ c0) ⊕ c1) ..., as the steps of propagate
            new = jnp.where(expand(j < nch), sr.add(new, part[:, j]), new)
        for gid, (fn, arity) in enumerate(cg.derive_fns):
            isg = valid & (cg.der_group[fc] == gid)

            def run(new, gid=gid, fn=fn, arity=arity, isg=isg):
                par = cg.der_par_ext[gid][cg.der_row[fc]]
                args = [x[par[:, a]] for a in range(arity)]
                return jnp.where(expand(isg), call_derive(fn, args, size, page, dt), new)

            new = lax.cond(jnp.any(isg), run, lambda new: new, new)
        return new

    def cond(state):
        _, _, _, _, count, ovf, rnd, _ = state
        return (count > 0) & ~ovf & (rnd < cg.max_rounds)

    def body(state):
        x, stamp, changed, f, count, ovf, rnd, work = state
        valid = f < n
        new = recompute(x, f, valid)
        cur = x.at[f].get(mode="fill", fill_value=zero)
        moved = differs(new, cur) & valid
        # Writing where(moved, new, cur) (equal values) makes the write depend on every read
        # of x; otherwise XLA copies x twice per round to keep it alive for the reads.
        x = x.at[f].set(jnp.where(expand(moved), new, cur), mode="drop", unique_indices=True)
        was = x_old.at[f].get(mode="fill", fill_value=zero)
        changed = changed.at[jnp.where(moved, f, n)].set(differs(new, was), mode="drop")
        # children of the nodes that moved, expanded from the out-CSR into slots_cap slots
        fc = jnp.where(valid, f, 0)
        odeg = jnp.where(moved, cg.out_deg[fc], 0)
        incl = _prefix(odeg)
        total = incl[-1]
        owner = jnp.searchsorted(incl, slots, side="right", method="scan_unrolled").astype(jnp.int32)
        owner = jnp.minimum(owner, size - 1)
        at = cg.out_start[fc[owner]] + slots - (incl[owner] - odeg[owner])
        kids = jnp.where(slots < total, cg.out_dst[jnp.clip(at, 0, cg.out_dst.shape[0] - 1)], n)
        tag = slots + 1 + rnd * slots_cap
        stamp = stamp.at[kids].set(tag, mode="drop")
        keep = (kids < n) & (stamp.at[kids].get(mode="fill", fill_value=-1) == tag)
        f_next, count = _compact(kids, keep, size, n)
        ovf = ovf | (total > slots_cap) | (count > size)
        work = work + jnp.sum(valid.astype(jnp.int32))
        return x, stamp, changed, f_next, count, ovf, rnd + 1, work

    f0, count0, ovf0 = _first_frontier(dirty, size, n)
    state = (x_old, jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool), f0, count0, ovf0, jnp.int32(0), jnp.int32(0))
    x, _, changed, _, count, ovf, rounds, work = lax.while_loop(cond, body, state)
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
    """``(capacity, edge_capacity)`` sized to the graph: frontier slots grow with the node
    count (32..256: every round costs O(capacity)), child slots with the mean out-degree."""
    n = cg.num_nodes
    size = int(min(256, max(32, ceil_pow2(max(n, 1) // 400))))
    mean_out = int(cg.out_dst.shape[0]) / max(n, 1)
    return size, size * int(min(16, max(4, ceil_pow2(int(np.ceil(2 * mean_out))))))


def propagate_incremental(cg: CompiledGraph, x_old, b_new, dirty, *, capacity: int | None = None, edge_capacity: int | None = None):
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
      edge_capacity: most child edges followed per round (static; default ``capacity`` times
        twice the mean out-degree, 4..16).

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
    size0, slots0 = default_capacity(cg)
    size = int(capacity) if capacity else size0
    slots = int(edge_capacity) if edge_capacity else size * (slots0 // size0)
    if size < 1 or slots < 1:
        raise InvalidArgumentError(f"capacities must be positive, got {capacity=} {edge_capacity=}")
    key = cg.program_key()
    traced = any(is_tracer(a) for a in (cg.weights, cg.in_src, x_old, b_new, dirty))
    if traced:
        return _incremental_jit(key, x_old, b_new, dirty, size, slots, "fallback")
    x, changed, ovf = _incremental_jit(key, x_old, b_new, dirty, size, slots, "flag")
    if bool(ovf):  # a round outgrew the capacities: the full pass is exact (and cheaper now)
        x = propagate(cg, b_new)
        changed = _differs_jit(x, x_old)
    return x, changed
