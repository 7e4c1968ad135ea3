"""Compilation of a :class:`ShadowPageGraph` into a :class:`CompiledGraph` (host-side numpy)."""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from .._errors import InvalidArgumentError
from ..semirings import get_semiring
from . import _topo
from ._builder import DATA
from ._compiled import CompiledGraph, weight_dtype

# Widths k of ELL classes: fine-grained for small in-degrees, then powers of two.
_K_LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)
_D_STEPS = 4  # row counts per width: d_hi, d_hi/4, d_hi/16, d_hi/64
_STEP_COST = 1024  # one extra step costs about as much as this many padded edges
_D_CAP = 2048  # most rows one step writes (its output is padded to the largest class)
_DER_ROWS_CAP = 256
_K_INC_CAP = 64  # widths of the incremental in/out tables


def _k_ladder(kmax: int) -> list[int]:
    """The ELL widths used for a graph whose largest in-degree is ``kmax``."""
    full = list(_K_LADDER)
    while full[-1] < kmax:
        full.append(full[-1] * 2)
    return [k for k in full if k < kmax] + [next(k for k in full if k >= kmax)]


def _bucket(n: int, minimum: int = 1) -> int:
    """Round ``n`` up to ``minimum`` or the ladder 2**(i/4) above it (at most ~19% padding),
    so that graphs of similar size share one compiled program."""
    n = max(int(n), minimum)
    if n <= 8:
        return n
    e = int(np.floor(np.log2(n)))
    for q in (4, 5, 6, 7, 8):
        v = -(-(q << e) // 4)  # ceil(q * 2**e / 4)
        if v >= n:
            return v
    return 2 << e


def _pow2_ceil(n: int) -> int:
    return 1 << max(int(np.ceil(np.log2(max(n, 1)))), 0)


def _pow2_floor(n: int) -> int:
    return 1 << int(np.floor(np.log2(max(n, 1))))


def _split_rows(r0: int, r: int, k: int, ds: list[int]) -> list[tuple[int, int, int, int]]:
    """Chunks ``(row0, rows, k, D)`` covering ``r`` rows of width ``k`` (cost-aware tail)."""
    out = []
    while r > 0:
        if r >= ds[0]:
            d = ds[0]
        else:
            up = min(d for d in ds if d >= r)
            down = [d for d in ds if d <= r]
            d = up if not down or (up - r) * k <= _STEP_COST else down[0]
        used = min(d, r)
        out.append((r0, used, k, d))
        r0 += used
        r -= used
    return out


def _plan_level(groups, d_options) -> list[tuple[int, int, int, int]]:
    """Chunks for one level's ELL rows, given as groups ``(row0, rows, k)`` of decreasing
    width: a dynamic program over which consecutive groups share chunks (padded to the
    first group's width), minimising padded edge slots + ``_STEP_COST`` per step."""
    g = len(groups)
    best = [0.0] * (g + 1)
    choice = [None] * g
    for i in range(g - 1, -1, -1):
        r0, _, k = groups[i]
        rows = 0
        best[i] = float("inf")
        # rows wider than 64 are reduced differently (see _propagate.fold): never mix them
        last = i + 1 if k > 64 else g
        for j in range(i, last):
            if groups[j][2] > 64 and j > i:
                break
            rows += groups[j][1]
            chunks = _split_rows(r0, rows, k, d_options[k])
            cost = sum(kk * d for _, _, kk, d in chunks) + _STEP_COST * len(chunks) + best[j + 1]
            if cost < best[i]:
                best[i], choice[i] = cost, (j, chunks)
    out, i = [], 0
    while i < g:
        j, chunks = choice[i]
        out += chunks
        i = j + 1
    return out


def compile_graph(g, semiring, num_nodes: int | None = None, *, chunk_edges: int | None = None) -> CompiledGraph:
    """Compile ``g`` for ``semiring`` into a static-shape :class:`CompiledGraph`.

    Args:
      g: the :class:`ShadowPageGraph`.
      semiring: a :class:`~mmsb_jax.semirings.Semiring` or a standard name.
      num_nodes: ``N``; node ids must lie in ``[0, N)``. Default: largest id + 1.
      chunk_edges: edges per step (a power of two; default grows with the graph, 256..8192).

    Edge weights ``None`` become the semiring's one; for BOOLEAN a weight is ``w != 0``.
    Only ``"data"`` edges carry values; derive functions are compiled in.

    Raises:
      InvalidArgumentError: a node id outside ``[0, num_nodes)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> from mmsb_jax.graph import ShadowPageGraph, propagate
      >>> g = ShadowPageGraph(); g.add_dependencies([0, 0, 1], [1, 2, 2], [1.0, 5.0, 1.0])
      >>> cg = g.compile(semirings.TROPICAL, num_nodes=3)
      >>> propagate(cg, jnp.array([0.0, jnp.inf, jnp.inf])).tolist()
      [0.0, 1.0, 2.0]
    """
    sr = get_semiring(semiring)
    nodes = np.fromiter(g._ord, np.int64, len(g._ord))
    max_id = int(nodes.max()) if nodes.size else -1
    n = max_id + 1 if num_nodes is None else int(num_nodes)
    if n < 0 or (num_nodes is not None and isinstance(num_nodes, bool)):
        raise InvalidArgumentError(f"num_nodes must be a non-negative int, got {num_nodes=}")
    if max_id >= n:
        raise InvalidArgumentError(f"node id {max_id} is outside [0, num_nodes={n})")
    ea = g.edge_arrays()
    num_edges = int(ea["src"].size)
    data = np.flatnonzero(ea["type_code"] == DATA)
    dsrc, ddst = ea["src"][data], ea["dst"][data]
    wdt = weight_dtype(sr)
    wvals = np.where(ea["default_weight"], sr.one, ea["weight"])
    wvals = (wvals != 0) if sr.dtype_kind == "bool" else wvals.astype(np.float32)

    # derive groups: key (fn, arity)
    derived = g._derived
    gkeys: dict = {}
    der_child = np.fromiter(derived, np.int64, len(derived))
    der_gid = np.zeros(der_child.size, np.int64)
    der_pars = []
    for i, (c, (fn, pars)) in enumerate(derived.items()):
        der_gid[i] = gkeys.setdefault((fn, len(pars)), len(gkeys))
        der_pars.append(pars)
    rel_src = np.fromiter((p for pars in der_pars for p in pars), np.int64)
    rel_dst = np.repeat(der_child, [len(p) for p in der_pars]).astype(np.int64)

    # levels over data + derive relations
    level, ok = _topo.kahn_levels(np.concatenate([dsrc, rel_src]), np.concatenate([ddst, rel_dst]), n)
    assert ok, "graph builder invariant broken: cycle"
    indeg = np.bincount(ddst, minlength=n)
    group = np.full(n, -1, np.int64)
    group[der_child] = der_gid
    kind = np.where(group >= 0, 2, np.where(indeg > 0, 1, 0))

    kmax = int(indeg.max()) if n and indeg.size else 0
    ks = _k_ladder(_pow2_ceil(max(kmax, 1)))
    kb = np.asarray(ks)[np.searchsorted(ks, np.maximum(indeg, 1))]
    e_data = int(dsrc.size)
    budget = int(chunk_edges) if chunk_edges else int(np.clip(_pow2_ceil(max(e_data, 1) // 32), 256, 8192))
    classes = []
    d_options = {}
    for k in ks:
        d_hi = min(_D_CAP, max(1, _pow2_floor(budget // k)))
        # small graphs: fewer classes (branches), hence faster compiles; padding is cheap there
        steps = _D_STEPS if budget > 1024 else (2 if budget > 256 else 1)
        ds = sorted({max(1, d_hi >> (2 * i)) for i in range(steps)}, reverse=True)
        d_options[k] = ds
        classes += [(k, d) for d in ds]
    class_id = {c: i + 1 for i, c in enumerate(classes)}

    # internal order: level, kind, width descending, derive group, id
    ids = np.arange(n, dtype=np.int64)
    perm = np.lexsort((ids, group, -kb * (kind == 1), kind, level))
    inv = np.empty(n, np.int64)
    inv[perm] = np.arange(n)

    # CSR of data in-edges by destination, in insertion order within a node
    in_ptr, in_order = _topo.csr(ddst, n)
    in_src_ext = dsrc[in_order]
    in_eidx = data[in_order]

    der_rows = []
    counts_by_level_group = {}
    if der_child.size:
        for c, gid in zip(der_child.tolist(), der_gid.tolist()):
            key = (int(level[c]), gid)
            counts_by_level_group[key] = counts_by_level_group.get(key, 0) + 1
        for gid in range(len(gkeys)):
            mx = max(v for (lv, gg), v in counts_by_level_group.items() if gg == gid)
            der_rows.append(min(_DER_ROWS_CAP, _pow2_ceil(mx)))
    derive_fns = tuple((fn, ar, der_rows[gid]) for (fn, ar), gid in gkeys.items())
    d_max = max([d for _, d in classes] + der_rows + [1])
    zero_row = n + d_max

    # ---- steps, walking internal rows in order
    kinds, eoffs, noffs = [], [], []
    ell_src_parts, ell_eidx_parts, der_par_parts = [], [], []
    eo = 0
    po = 0
    one_pos = None  # filled below once W is known
    lv_i, kind_i, kb_i, grp_i = level[perm], kind[perm], kb[perm], group[perm]
    bounds = np.flatnonzero(np.diff(np.stack([lv_i, kind_i, kb_i, grp_i]), axis=1).any(axis=0)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64) if n else np.zeros(0, np.int64)
    ends = np.concatenate([bounds, [n]]).astype(np.int64) if n else np.zeros(0, np.int64)
    pending_ell = []  # (row0, rows, k, D)
    level_groups = []  # consecutive ELL groups of one level: (row0, rows, k)

    def flush():
        if level_groups:
            pending_ell.extend(_plan_level(level_groups, d_options))
            level_groups.clear()

    for a, b in zip(starts.tolist(), ends.tolist()):
        kd = kind_i[a]
        if kd != 1 or (level_groups and lv_i[level_groups[0][0]] != lv_i[a]):
            flush()
        if kd == 0:
            continue
        if kd == 1:
            level_groups.append((a, b - a, int(kb_i[a])))
        else:
            gid = int(grp_i[a])
            fn, ar, rows = derive_fns[gid]
            for r0 in range(a, b, rows):
                used = min(rows, b - r0)
                nodes_ext = perm[r0 : r0 + used]
                par = np.asarray([derived[int(c)][1] for c in nodes_ext], np.int64)
                par = inv[par]
                par = np.concatenate([par, np.repeat(par[:1], rows - used, axis=0)])
                kinds.append(len(classes) + 1 + gid)
                eoffs.append(po)
                noffs.append(r0)
                der_par_parts.append(par.reshape(-1))
                po += rows * ar
    flush()
    # ELL blocks (vectorised per step)
    for r0, used, k, d in pending_ell:
        rows = np.arange(r0, r0 + used)
        ext = perm[rows]
        st, dg = in_ptr[ext], in_ptr[ext + 1] - in_ptr[ext]
        j = np.arange(k)[:, None]
        valid = j < dg[None, :]
        pos = np.where(valid, st[None, :] + j, 0)
        blk_src = np.full((k, d), zero_row, np.int64)
        blk_eid = np.full((k, d), -1, np.int64)
        blk_src[:, :used] = np.where(valid, inv[in_src_ext[pos]] if in_src_ext.size else 0, zero_row)
        blk_eid[:, :used] = np.where(valid, in_eidx[pos] if in_eidx.size else 0, -1)
        kinds.append(class_id[(k, d)])
        eoffs.append(eo)
        noffs.append(r0)
        ell_src_parts.append(blk_src.reshape(-1))
        ell_eidx_parts.append(blk_eid.reshape(-1))
        eo += k * d
    # steps must run in row order (ELL and derive steps interleave by level)
    order = np.argsort(np.asarray(noffs, np.int64), kind="stable")
    kinds_a = np.asarray(kinds, np.int64)[order] if kinds else np.zeros(0, np.int64)
    eoffs_a = np.asarray(eoffs, np.int64)[order] if eoffs else np.zeros(0, np.int64)
    noffs_a = np.asarray(noffs, np.int64)[order] if noffs else np.zeros(0, np.int64)
    # derive steps were appended first; fix their ordering relative to ELL steps: both lists
    # were built with their own offsets, so sorting by first row is all that is needed.

    w_cap = _bucket(num_edges + 1, 64)
    one_pos = w_cap - 1
    e_flat = _bucket(eo + max(k * d for k, d in classes), 1024)
    ell_src = np.full(e_flat, zero_row, np.int64)
    ell_eidx = np.full(e_flat, one_pos, np.int64)
    if ell_src_parts:
        s = np.concatenate(ell_src_parts)
        e = np.concatenate(ell_eidx_parts)
        ell_src[: s.size] = s
        ell_eidx[: e.size] = np.where(e < 0, one_pos, e)
    p_flat = _bucket(po + max([r * a for _, a, r in derive_fns] + [1]), 64)
    der_par = np.full(p_flat, zero_row, np.int64)
    if der_par_parts:
        p = np.concatenate(der_par_parts)
        der_par[: p.size] = p
    k_steps = _bucket(kinds_a.size, 16)
    step_kind = np.zeros(k_steps, np.int64)
    step_eoff = np.zeros(k_steps, np.int64)
    step_noff = np.zeros(k_steps, np.int64)
    step_kind[: kinds_a.size], step_eoff[: kinds_a.size], step_noff[: kinds_a.size] = kinds_a, eoffs_a, noffs_a

    weights = np.full(w_cap, sr.one, dtype=np.bool_ if sr.dtype_kind == "bool" else np.float32)
    weights[:num_edges] = wvals

    # incremental tables (node ids): in-CSR over data edges, out-CSR over data + derive
    e_in = _bucket(e_data + 1, 64)
    in_src_t = np.full(e_in, n, np.int64)
    in_src_t[:e_data] = in_src_ext
    in_wpos = np.full(e_in, one_pos, np.int64)
    in_wpos[:e_data] = in_eidx
    osrc = np.concatenate([dsrc, rel_src])
    odst = np.concatenate([ddst, rel_dst])
    out_ptr, out_order = _topo.csr(osrc, n)
    e_out = _bucket(osrc.size + 1, 64)
    out_dst = np.full(e_out, n, np.int64)
    out_dst[: osrc.size] = odst[out_order]
    outdeg = np.diff(out_ptr)
    k_in = min(_K_INC_CAP, _pow2_ceil(max(kmax, 1)))
    der_nodes, der_par_ext = [], []
    der_row = np.zeros(n, np.int64)
    for (fn, ar), gid in gkeys.items():
        m = der_gid == gid
        ch = der_child[m]
        der_row[ch] = np.arange(ch.size)
        rows = _bucket(ch.size)
        dn = np.full(rows, n, np.int64)
        dn[: ch.size] = ch
        dp = np.zeros((rows, ar), np.int64)
        dp[: ch.size] = np.asarray([derived[int(c)][1] for c in ch], np.int64)
        dp[ch.size :] = dp[0]
        der_nodes.append(jnp.asarray(dn, jnp.int32))
        der_par_ext.append(jnp.asarray(dp, jnp.int32))

    i32 = lambda a: jnp.asarray(np.asarray(a, np.int64), jnp.int32)  # noqa: E731
    weights_j = jnp.asarray(weights, wdt)
    return CompiledGraph(
        perm=i32(perm),
        inv=i32(inv),
        step_kind=i32(step_kind),
        step_eoff=i32(step_eoff),
        step_noff=i32(step_noff),
        ell_src=i32(ell_src),
        ell_eidx=i32(ell_eidx),
        ell_weights=weights_j[i32(ell_eidx)],
        der_par=i32(der_par),
        weights=weights_j,
        num_edges=jnp.asarray(num_edges, jnp.int32),
        in_start=i32(in_ptr[:-1]),
        in_deg=i32(np.diff(in_ptr)),
        in_src=i32(in_src_t),
        in_wpos=i32(in_wpos),
        in_weights=weights_j[i32(in_wpos)],
        out_start=i32(out_ptr[:-1]),
        out_deg=i32(outdeg),
        out_dst=i32(out_dst),
        der_group=i32(group),
        der_row=i32(der_row),
        der_nodes=tuple(der_nodes),
        der_par_ext=tuple(der_par_ext),
        max_rounds=jnp.asarray(int(level.max()) + 2 if n else 1, jnp.int32),
        semiring=sr,
        num_nodes=n,
        classes=tuple(classes),
        derive_fns=derive_fns,
        d_max=int(d_max),
        k_in=int(k_in),
    )
