"""Incremental propagation (Layer 4): recompute only the dirty cone, with cutoff.

Algorithm (jittable, exact): a frontier of at most ``capacity`` nodes is recomputed per round
(``x[v] = b[v] ⊕ ⨁ w_uv ⊗ x[u]``, or ``fn(*parents)`` for a derived node); the nodes whose
value changed push their children into the next frontier (deduplicated). The first frontier
is the dirty set, so a node is recomputed only when it is dirty or a parent changed, and the
walk stops where values stop changing. Rounds run in a ``lax.while_loop`` whose work is
proportional to the frontier, not to the graph. A node may be recomputed in several rounds
(when parents on paths of different lengths change), always from current parent values, so
on a DAG the result equals :func:`propagate` exactly (the same reduction over the same edge
order). When a round needs more than the static capacities (frontier nodes, child edges,
in/out-degree of the per-node tables), the whole call falls back to full propagation
inside the same program (``lax.cond``), so the result is always exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._compat import is_tracer
from .._errors import InvalidArgumentError
from ._compiled import CompiledGraph
from ._propagate import _bcast_weights, _propagate_impl, call_derive, check_pages, fold, propagate


def _prefix(mask):
    """Inclusive prefix count of a 1-D bool/int array, as int32.

    Blocked: a triangular matmul inside blocks of 64 (float32, exact below 2**24) and a
    recursive prefix over the block totals. On CPU this is several times faster than
    ``jnp.cumsum`` for the few-thousand-element arrays used here.
    """
    n = mask.shape[0]
    if n <= 128:
        return jnp.cumsum(mask.astype(jnp.int32))
    blk = 64
    rows = -(-n // blk)
    f = jnp.zeros(rows * blk, jnp.float32).at[:n].set(mask.astype(jnp.float32)).reshape(rows, blk)
    within = f @ jnp.triu(jnp.ones((blk, blk), jnp.float32))
    offs = _prefix(within[:, -1].astype(jnp.int32)) - within[:, -1].astype(jnp.int32)
    return (within.astype(jnp.int32) + offs[:, None]).reshape(-1)[:n]


def _compact(vals, keep, size: int, fill):
    """The kept ``vals`` packed into ``size`` slots (rest ``fill``), and how many were kept."""
    pos = _prefix(keep) - 1
    cnt = pos[-1] + 1 if vals.shape[0] else jnp.int32(0)
    dest = jnp.where(keep, pos, size)
    out = jnp.full((size,), fill, vals.dtype).at[dest].set(vals, mode="drop")
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


def _incremental_impl(cg: CompiledGraph, x_old, b_new, dirty, capacity: int, edge_capacity: int, mode: str = "fallback"):
    sr = cg.semiring
    n = cg.num_nodes
    page = x_old.shape[1:]
    dt = x_old.dtype
    S, EB = capacity, edge_capacity
    zero = sr.zero
    w_in = cg.in_weights.astype(dt)
    one = jnp.asarray(sr.one, dt)
    j_in = jnp.arange(cg.k_in, dtype=jnp.int32)
    slots = jnp.arange(EB, dtype=jnp.int32)

    if dirty.dtype == jnp.bool_:
        f0, cnt0, bovf = _mask_to_ids(dirty, S, n)
        ovf0 = (cnt0 > S) | bovf
    else:
        ids = jnp.where((dirty >= 0) & (dirty < n), dirty, n).astype(jnp.int32)
        f0 = jnp.full((S,), n, jnp.int32).at[: ids.shape[0]].set(ids[:S]) if ids.shape[0] else jnp.full((S,), n, jnp.int32)
        ovf0 = jnp.asarray(ids.shape[0] > S)

    def recompute(x, f):
        valid = f < n
        fc = jnp.where(valid, f, 0)
        deg = jnp.where(valid & (cg.der_group[fc] < 0), cg.in_deg[fc], 0)
        em = j_in[None, :] < deg[:, None]
        pos = jnp.where(em, cg.in_start[fc][:, None] + j_in[None, :], 0)
        src = jnp.where(em, cg.in_src[pos], n)
        xs = x.at[src].get(mode="fill", fill_value=zero)
        w = jnp.where(em.reshape(em.shape + (1,) * (w_in.ndim - 1)), w_in[pos], one)
        w = _bcast_weights(w.reshape((S * cg.k_in,) + w_in.shape[1:]), S * cg.k_in, page)
        w = w.reshape((S, cg.k_in) + w.shape[1:])
        r = fold(sr, sr.mul(w, xs), 1)
        new = sr.add(b_new.at[f].get(mode="fill", fill_value=zero), r)
        heavy = jnp.any(valid & (cg.in_deg[fc] > cg.k_in))
        for gid, (fn, arity, _rows) in enumerate(cg.derive_fns):
            isg = valid & (cg.der_group[fc] == gid)

            def run(new, gid=gid, fn=fn, arity=arity, isg=isg):
                par = cg.der_par_ext[gid][cg.der_row[fc]]
                args = [x[par[:, a]] for a in range(arity)]
                out = call_derive(fn, args, S, page, dt)
                m = isg.reshape((S,) + (1,) * len(page))
                return jnp.where(m, out, new)

            new = lax.cond(jnp.any(isg), run, lambda new: new, new)
        return new, heavy

    tcap = 8 * S  # node ids recomputed over the whole call (for the final `changed` mask)

    def cond(state):
        x, stamp, f, tbuf, tcount, ovf, rnd = state
        return jnp.any(f < n) & ~ovf & (rnd < cg.max_rounds)

    def body(state):
        x, stamp, f, tbuf, tcount, ovf, rnd = state
        valid = f < n
        new, heavy = recompute(x, f)
        cur = x.at[f].get(mode="fill", fill_value=zero)
        moved = _page_any(new != cur) & valid
        # Writing where(moved, new, cur) (equal values) makes the write depend on every read
        # of x; otherwise XLA copies x twice per round to keep it alive for the reads.
        keep_old = ~moved.reshape((S,) + (1,) * len(page))
        x = x.at[f].set(jnp.where(keep_old, cur, new), mode="drop")
        # remember what was recomputed (the frontier is packed: valid entries come first)
        nf = jnp.sum(valid.astype(jnp.int32))
        tbuf = lax.dynamic_update_slice_in_dim(tbuf, f, jnp.minimum(tcount, tcap), 0)
        tcount = tcount + nf
        # children of the nodes that moved, expanded from the out-CSR into EB slots
        fc = jnp.where(valid, f, 0)
        odeg = jnp.where(moved, cg.out_deg[fc], 0)
        incl = _prefix(odeg)
        total = incl[-1]
        excl = incl - odeg
        has = odeg > 0
        owners, _ = _compact(jnp.arange(S, dtype=jnp.int32), has, S, 0)
        marks = jnp.zeros((EB,), jnp.int32).at[jnp.where(has, excl, EB)].add(1, mode="drop")
        owner = owners[jnp.clip(_prefix(marks) - 1, 0, S - 1)]
        within = slots - excl[owner]
        kid_pos = cg.out_start[fc[owner]] + within
        kids = jnp.where(slots < total, cg.out_dst[jnp.clip(kid_pos, 0, cg.out_dst.shape[0] - 1)], n)
        tag = slots + 1 + rnd * EB
        stamp = stamp.at[kids].set(tag, mode="drop")
        keep = (kids < n) & (stamp.at[kids].get(mode="fill", fill_value=-1) == tag)
        f_next, cnt = _compact(kids, keep, S, n)
        ovf = ovf | heavy | (total > EB) | (cnt > S) | (tcount > tcap)
        return x, stamp, f_next, tbuf, tcount, ovf, rnd + 1

    tbuf0 = jnp.full((tcap + S,), n, jnp.int32)
    state = (x_old, jnp.zeros((n,), jnp.int32), f0, tbuf0, jnp.int32(0), ovf0, jnp.int32(0))
    x, _, f, tbuf, tcount, ovf, rounds = lax.while_loop(cond, body, state)
    ovf = ovf | jnp.any(f < n)
    if mode == "stats":  # for benchmarks and tests: how the loop went
        return {"rounds": rounds, "overflow": ovf, "recomputed": tcount}

    def incremental(_):
        t = tbuf[:tcap]
        moved = _page_any(x.at[t].get(mode="fill", fill_value=zero) != x_old.at[t].get(mode="fill", fill_value=zero))
        return x, jnp.zeros((n,), bool).at[t].set(moved, mode="drop")

    if mode == "flag":  # the caller falls back to full propagation when ovf is set
        return (*incremental(None), ovf)

    def full(_):
        xf = _propagate_impl(cg, b_new)
        return xf, _page_any(xf != x_old)

    return lax.cond(ovf, full, incremental, None)


_incremental_jit = jax.jit(_incremental_impl, static_argnums=(4, 5, 6))


_changed_jit = jax.jit(lambda x, x_old: _page_any(x != x_old))


def default_capacity(num_nodes: int) -> int:
    """Frontier capacity: every round costs O(capacity) whatever the frontier, so keep it
    modest (measured on CPU: ~1 µs per slot and round at 256)."""
    return int(min(256, max(64, 1 << int(np.ceil(np.log2(max(num_nodes, 1) / 256 + 1))))))


def propagate_incremental(cg: CompiledGraph, x_old, b_new, dirty, *, capacity: int | None = None, edge_capacity: int | None = None):
    """Update a propagated ``x_old`` after the bases of the ``dirty`` nodes changed.

    Recomputes only nodes that are dirty or have a parent whose value changed, stopping where
    values stop changing (cutoff). The result equals ``propagate(cg, b_new)``, bit for bit under
    the idempotent semirings (tropical, max-plus, boolean, max-times on its domain x >= 0) for
    every value but the sign of a zero (a change -0.0 <-> +0.0 compares equal, so it is not
    propagated). Under real and log the fused arithmetic of the two programs may differ in the
    last bit (XLA may contract ``b + w * x`` into an FMA in one and not the other); the state
    store therefore propagates those semirings with full passes.
    Works under ``jit`` and ``vmap`` (it is a forward computation: use :func:`propagate`
    for gradients). Called eagerly, it reads one overflow flag back to the host and runs
    :func:`propagate` when the capacities were exceeded; under ``jit`` that fallback is a
    ``lax.cond`` inside the program.

    Args:
      cg: the compiled graph ``x_old`` was propagated on.
      x_old: ``propagate(cg, b_old)``.
      b_new: new bases; equal to ``b_old`` outside ``dirty``.
      dirty: bool ``(num_nodes,)`` mask of the nodes whose base changed (an int array of
        node ids is accepted too and skips the mask scan; ids outside ``[0, num_nodes)`` raise,
        or under ``jit`` are ignored).
      capacity: most nodes recomputed per round (static; default grows with the graph,
        64..256). A round that needs more falls back to full propagation, exactly.
      edge_capacity: most child edges followed per round (static; default ``4 * capacity``).

    Returns:
      ``(x, changed)``: the new values and a bool ``(num_nodes,)`` mask of the nodes whose
      value differs from ``x_old``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> from mmsb_jax.graph import ShadowPageGraph, propagate, propagate_incremental
      >>> g = ShadowPageGraph(); g.add_dependencies([0, 1], [1, 2])
      >>> cg = g.compile(semirings.REAL, num_nodes=3)
      >>> x = propagate(cg, jnp.array([1.0, 0.0, 0.0]))
      >>> x2, changed = propagate_incremental(cg, x, jnp.array([1.0, 2.0, 0.0]), jnp.array([False, True, False]))
      >>> x2.tolist(), changed.tolist()
      ([1.0, 3.0, 3.0], [False, True, True])
    """
    x_old = check_pages(cg, x_old, "x_old")
    b_new = check_pages(cg, b_new, "b_new")
    if x_old.shape != b_new.shape or x_old.dtype != b_new.dtype:
        raise InvalidArgumentError(f"x_old and b_new must match: {x_old.shape=} {x_old.dtype=} vs {b_new.shape=} {b_new.dtype=}")
    if not isinstance(dirty, jax.Array):
        dirty = jnp.asarray(dirty)
    if dirty.dtype == jnp.bool_:
        if dirty.shape != (cg.num_nodes,):
            raise InvalidArgumentError(f"dirty must be a bool mask of shape ({cg.num_nodes},), got {dirty.shape=}")
    elif not (jnp.issubdtype(dirty.dtype, jnp.integer) and dirty.ndim == 1):
        raise InvalidArgumentError(f"dirty must be a bool mask or a 1-D int array of node ids, got {dirty.dtype=} {dirty.shape=}")
    elif dirty.size and not is_tracer(dirty):  # concrete ids are checked (traced ones outside [0, n) are ignored)
        lo, hi = int(jnp.min(dirty)), int(jnp.max(dirty))
        if lo < 0 or hi >= cg.num_nodes:
            raise InvalidArgumentError(
                f"dirty holds node id {lo if lo < 0 else hi}, outside [0, {cg.num_nodes})"
            )
    s = int(capacity) if capacity else default_capacity(cg.num_nodes)
    eb = int(edge_capacity) if edge_capacity else 4 * s
    if s < 1 or eb < 1:
        raise InvalidArgumentError(f"capacities must be positive, got {capacity=} {edge_capacity=}")
    traced = any(is_tracer(a) for a in (cg.weights, cg.in_src, x_old, b_new, dirty))
    if traced:
        return _incremental_jit(cg, x_old, b_new, dirty, s, eb, "fallback")
    x, changed, ovf = _incremental_jit(cg, x_old, b_new, dirty, s, eb, "flag")
    if bool(ovf):  # a round outgrew the capacities: the full pass is exact (and cheaper now)
        x = propagate(cg, b_new)
        changed = _changed_jit(x, x_old)
    return x, changed
