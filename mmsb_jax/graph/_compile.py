"""Compilation of a :class:`ShadowPageGraph` into a :class:`CompiledGraph`.

:mod:`._plan` lays the graph out (host-side numpy); this module pads the layout to its
buckets, converts the weights by the weight rule and moves everything to the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InvalidArgumentError
from ..semirings import get_semiring
from ..semirings._carriers import CHECKED_DTYPES, first_misfit, first_negative, weights_to_carrier
from . import _plan
from ._buckets import ceil_eighth_pow2, ceil_pow2, ceil_quarter_pow2
from ._compiled import CompiledGraph


def _i32(a) -> jax.Array:
    return jnp.asarray(np.asarray(a).astype(np.int32, copy=False))  # converted on the host: no device op


def _padded(a: np.ndarray, length: int, fill) -> np.ndarray:
    out = np.full((length,) + a.shape[1:], fill, a.dtype)
    out[: a.shape[0]] = a
    return out


_MAX_HUB_ROWS = 4  # table rows an incremental round reads for one node, at most
_MIN_BUCKET = 16  # smallest step / weight / table bucket: tiny graphs share programs


def _hub_rows(rows: np.ndarray) -> int:
    """Rows per node an incremental round reads: the most any node has, as a power of two,
    at most ``_MAX_HUB_ROWS`` (nodes with more take the full-pass fallback)."""
    return min(_MAX_HUB_ROWS, ceil_pow2(int(rows.max()) if rows.size else 1))


def _storage_dtype(sr, dtype):
    if dtype is not None:
        return np.dtype(dtype)
    if sr.dtype_kind == "bool":
        return np.dtype(np.bool_)
    return np.dtype(np.float64) if jax.config.jax_enable_x64 else np.dtype(np.float32)


def _check_args(g, sr, num_nodes, dtype) -> int:
    nodes = g.node_ids()
    max_id = int(nodes.max()) if nodes.size else -1
    if num_nodes is not None and (isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer))):
        raise InvalidArgumentError(f"num_nodes must be a non-negative int, got {num_nodes=}")
    n = max_id + 1 if num_nodes is None else int(num_nodes)
    if n < 0:
        raise InvalidArgumentError(f"num_nodes must be a non-negative int, got {num_nodes=}")
    if max_id >= n:
        raise InvalidArgumentError(f"node id {max_id} is outside [0, num_nodes={n})")
    if dtype is not None:
        why = sr.refusal(dtype)
        if why is not None:
            raise InvalidArgumentError(f"compile(dtype={np.dtype(dtype)}): {why}")
        if np.dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
            raise InvalidArgumentError(
                f"compile(dtype={np.dtype(dtype)}) needs 64-bit mode (with jax.enable_x64(True): ...)"
            )
    return n


def _weights(sr, p: _plan.Plan, dtype, capacity: int, check_sign: bool = True):
    """``(weights, weight_fit)``: stored weights (``capacity`` entries, data edges at their
    positions, the rest the semiring's one) and the per-dtype fit table (edge positions)."""
    store = _storage_dtype(sr, dtype)
    e = p.edges
    w_data = np.where(np.isnan(e.weight[e.pos]), float(sr.one), e.weight[e.pos])
    neg = first_negative(sr, w_data) if check_sign else -1
    if neg >= 0:
        raise InvalidArgumentError(
            f"edge ({int(e.src[neg])}, {int(e.dst[neg])}) has weight {float(w_data[neg])!r}: semiring "
            f"{sr.name!r} is defined on values >= 0")
    vals, bad = weights_to_carrier(sr, w_data, store)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(
            f"edge ({int(e.src[i])}, {int(e.dst[i])}) has weight {float(w_data[i])!r}, which does not fit "
            f"{store} pages under semiring {sr.name!r}: integer pages need integral weights representable "
            "in the page dtype (or the semiring's zero)"
        )
    weights = np.full(capacity, sr.one_for(store), store)
    weights[e.pos] = vals
    misfit = first_misfit(sr, w_data)
    fit = np.where(misfit >= 0, e.pos[np.maximum(misfit, 0)] if e.pos.size else -1, -1)
    f64 = CHECKED_DTYPES.index(np.dtype(np.float64))
    if store != np.float64 and store.kind == "f" and sr.accepts(np.float64):
        rounded = np.flatnonzero(vals.astype(np.float64) != w_data)
        fit[f64] = e.pos[rounded[0]] if rounded.size else -1
    return weights, fit.astype(np.int32)


def compile_graph(g, semiring, num_nodes: int | None = None, *, dtype=None, outputs=None,
                  check_sign: bool = True) -> CompiledGraph:
    """Compile ``g`` for ``semiring`` into a static-shape :class:`CompiledGraph`.

    Only ``"data"`` edges carry values; derive functions are compiled in. Compile time does
    not grow with the depth of the graph (one loop body), and an edit that keeps every
    bucket (nodes, edges, steps, in-degree: ``cg.buckets``) compiles to a graph that reuses
    the jitted programs of the previous one.

    The weight rule (edge weights are Python floats; ``None`` is the semiring's one):

    * float pages: the weight rounded to the page dtype (stored in float64 when compiled in
      64-bit mode or with ``dtype=float64``, so float64 pages are not rounded through float32;
      a float64 page of a graph stored in float32 is refused unless every weight is a float32);
    * integer pages: a weight equal to the semiring's zero (``inf`` for TROPICAL, ``-inf``
      for MAX_PLUS) is the dtype's zero (e.g. ``INT32_MAX``); any other weight must be
      integral and representable in the page dtype, else it is refused
      (:class:`~mmsb_jax.InvalidArgumentError` naming the edge and weight, here with
      ``dtype=``, else by :func:`propagate` on pages of that dtype);
    * bool pages: a weight is the semiring's one unless it equals the semiring's zero
      (REAL / BOOLEAN / MAX_TIMES: ``w != 0``; TROPICAL: ``w != inf``).

    Args:
      g: the :class:`ShadowPageGraph`.
      semiring: a :class:`~mmsb_jax.semirings.Semiring` or a standard name.
      num_nodes: ``N``; node ids must lie in ``[0, N)``. Default: largest id + 1.
      dtype: the page dtype the graph will propagate (optional): weights are converted and
        checked now and stored in it. Without it, the graph propagates pages of every dtype
        the semiring accepts, converting its (float) weights by the rule at run time.
      outputs: node ids whose values are wanted (optional). The graph is rewritten to
        compute only them and what they depend on: every other node keeps ``x[v] = b[v]``.
        The outputs' values are bit for bit those of the full graph under every semiring
        (the same edges, in the same order); fewer steps run (``benchmarks/bench_graph.py``).
        Without it every node is computed.
      check_sign: refuse a negative weight when the semiring is defined on values >= 0
        (``semiring.nonnegative``: MAX_TIMES). ``False``: the caller vouches for its weights
        (a state replaying a log written before the rule compiles what was logged).

    Raises:
      InvalidArgumentError: a node id outside ``[0, num_nodes)`` (in the graph or
        ``outputs``); a ``dtype`` the semiring refuses (the message says why); a weight that
        does not fit ``dtype``; a negative weight under MAX_TIMES (``check_sign``).

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> from mmsb_jax.graph import ShadowPageGraph, propagate
      >>> g = ShadowPageGraph(); g.add_dependencies([0, 0, 1], [1, 2, 2], [1.0, 5.0, 1.0])
      >>> cg = g.compile(semirings.TROPICAL, num_nodes=3)
      >>> propagate(cg, jnp.array([0.0, jnp.inf, jnp.inf])).tolist()
      [0.0, 1.0, 2.0]
      >>> int32_max = np.iinfo(np.int32).max  # TROPICAL's zero on int32 pages
      >>> propagate(cg, jnp.array([0, int32_max, int32_max], jnp.int32)).tolist()
      [0, 1, 2]
      >>> only_1 = g.compile(semirings.TROPICAL, num_nodes=3, outputs=[1])  # node 2 is not computed
      >>> propagate(only_1, jnp.array([0.0, jnp.inf, 7.0])).tolist()
      [0.0, 1.0, 7.0]
    """
    sr = get_semiring(semiring)
    n = _check_args(g, sr, num_nodes, dtype)
    if outputs is not None:
        out = np.asarray(outputs)
        if out.size == 0:
            out = out.astype(np.int64)
        if out.dtype.kind not in "iu" or (out.size and (out.min() < 0 or out.max() >= n)):
            raise InvalidArgumentError(f"outputs must be node ids in [0, num_nodes={n}), got outputs={outputs!r}")
        outputs = out
    p = _plan.plan(g, n, outputs)
    tables = _plan.incremental_tables(p)
    rows, width = p.rows, p.width
    zero_row = n + rows
    w_cap = ceil_quarter_pow2(p.edges.num_edges + 1, _MIN_BUCKET)
    one_pos = w_cap - 1
    weights, fit = _weights(sr, p, dtype, w_cap, check_sign)

    st = p.steps
    s_cap = ceil_eighth_pow2(st.row0.size, _MIN_BUCKET) if st.row0.size else 0
    ell_src = _padded(np.where(st.ell_src < 0, zero_row, st.ell_src), s_cap, zero_row)
    ell_pos = _padded(np.where(st.ell_pos < 0, one_pos, st.ell_pos), s_cap, one_pos)
    der_par = _padded(st.der_par, ceil_quarter_pow2(st.der_par.size + 1), zero_row)

    in_cap = ceil_quarter_pow2(tables.in_src.shape[0] + 1, _MIN_BUCKET)  # + 1: the last row is padding
    in_src = _padded(np.where(tables.in_src < 0, n, tables.in_src), in_cap, n).reshape(-1)
    in_pos = _padded(np.where(tables.in_pos < 0, one_pos, tables.in_pos), in_cap, one_pos).reshape(-1)
    out_cap = ceil_quarter_pow2(tables.out_dst.shape[0] + 1, _MIN_BUCKET)
    out_dst = _padded(np.where(tables.out_dst < 0, n, tables.out_dst), out_cap, n).reshape(-1)
    in_start = np.append(np.where(tables.in_rows > 0, tables.in_start, 0), in_cap - 1)
    out_start = np.append(np.where(tables.out_rows > 0, tables.out_start, 0), out_cap - 1)
    der_nodes, der_par_ext = [], []
    for kids, pars in zip(tables.der_nodes, tables.der_parents):
        r = ceil_quarter_pow2(kids.size)
        der_nodes.append(_i32(_padded(kids, r, n)))
        der_par_ext.append(_i32(np.concatenate([pars, np.repeat(pars[:1], r - kids.size, 0)])))

    weights_j = jnp.asarray(weights)
    return CompiledGraph(
        perm=_i32(p.perm),
        inv=_i32(p.inv),
        step_row0=_i32(_padded(st.row0, s_cap, 0)),
        step_count=_i32(_padded(st.count, s_cap, 0)),
        step_kind=_i32(_padded(st.kind, s_cap, 0)),
        step_poff=_i32(_padded(st.poff, s_cap, 0)),
        ell_src=_i32(ell_src),
        ell_pos=_i32(ell_pos),
        ell_weights=jnp.asarray(weights[ell_pos]),  # laid out on the host: no device gather to compile
        der_par=_i32(der_par),
        weights=weights_j,
        weight_fit=jnp.asarray(fit, jnp.int32),
        in_start=_i32(in_start),
        in_rows=_i32(np.append(tables.in_rows, 0)),
        in_src=_i32(in_src),
        in_pos=_i32(in_pos),
        in_weights=jnp.asarray(weights[in_pos]),
        out_start=_i32(out_start),
        out_rows=_i32(np.append(tables.out_rows, 0)),
        out_dst=_i32(out_dst),
        der_group=_i32(p.group),
        der_row=_i32(tables.der_row),
        der_nodes=tuple(der_nodes),
        der_par_ext=tuple(der_par_ext),
        max_rounds=jnp.asarray(p.depth + 2, jnp.int32),
        semiring=sr,
        num_nodes=n,
        rows=rows,
        width=width,
        in_width=tables.in_width,
        in_hub_rows=_hub_rows(tables.in_rows),
        out_width=tables.out_width,
        out_hub_rows=_hub_rows(tables.out_rows),
        derive_fns=tuple(p.groups),
        hub_chunks=p.hub_chunks,
        num_edges=p.edges.num_edges,
    )
