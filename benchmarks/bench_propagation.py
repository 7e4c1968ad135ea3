"""Propagation benchmarks: full TROPICAL pass, incremental cone, page widths, build time.

Every case measures its baseline in the same process. Graphs are random DAGs
(``mmsb_jax.graph.random_dag``): a hidden topological order, each edge's child uniform and
its parent uniform among the earlier nodes (~100 levels for 100k nodes / 500k edges),
relabelled by a random permutation.

``OMP_WAIT_POLICY=PASSIVE`` is set (unless already set) before python-graphblas loads:
SuiteSparse:GraphBLAS's OpenMP threads otherwise spin after each call and slowed the cases
that ran after the GraphBLAS baseline on this 2-core machine.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before graphblas (OpenMP) initialises

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax import semirings
from mmsb_jax.graph import ShadowPageGraph, propagate, propagate_incremental, random_dag
from mmsb_jax.graph import _topo

from ._harness import result, timeit


def _span(t: dict) -> list:
    return [min(t["samples"]), max(t["samples"])]


class NumpyLevels:
    """The hand-written baseline: a numpy loop over topological levels (np.minimum.at)."""

    def __init__(self, src, dst, w, n):
        lvl, _ = _topo.kahn_levels(src, dst, n)
        o = np.argsort(lvl[dst], kind="stable")
        bounds = np.searchsorted(lvl[dst][o], np.arange(lvl.max() + 2))
        s, d, ww = src[o], dst[o], w[o].astype(np.float32)
        self.levels = [(s[a:b], d[a:b], ww[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        self.num_levels = int(lvl.max()) + 1

    def __call__(self, b):
        x = b.copy()
        for s, d, w in self.levels:
            v = x[s] + (w if x.ndim == 1 else w[:, None])
            np.minimum.at(x, d, v)
        return x


def _sources(n, k, rng, width=None):
    shape = (n,) if width is None else (n, width)
    b = np.full(shape, np.inf, np.float32)
    idx = rng.choice(n, k, replace=False)
    b[idx] = rng.uniform(0, 1, (k,) + shape[1:]).astype(np.float32)
    return b


def _block(f):
    return lambda: jax.block_until_ready(f())


def _graphblas_case(src, dst, w, n, b, x_ref, t_jax, repeat):
    try:
        import graphblas as gb
    except Exception as e:  # noqa: BLE001
        return result(
            "tropical_full_vs_graphblas", value=t_jax, unit="s", baseline="python-graphblas min_plus vxm fixpoint",
            baseline_value=float("nan"), higher_is_better=False, target=">= 10x faster", met=False,
            skipped=f"python-graphblas unavailable: {e}",
        )
    A = gb.Matrix.from_coo(src, dst, w.astype(np.float64), nrows=n, ncols=n, dup_op=gb.binary.min)
    fin = np.flatnonzero(np.isfinite(b))
    x0 = gb.Vector.from_coo(fin, b[fin].astype(np.float64), size=n)

    def fixpoint():
        x = x0
        iters = 0
        while True:
            y = x.vxm(A, gb.semiring.min_plus).new()
            x2 = x.ewise_add(y, gb.binary.min).new()
            iters += 1
            if x2.isequal(x):
                return x2, iters
            x = x2

    xg, iters = fixpoint()
    idx, vals = xg.to_coo()
    dense = np.full(n, np.inf)
    dense[idx] = vals
    ok = np.allclose(dense, x_ref, rtol=1e-4, atol=1e-4) or np.array_equal(np.isinf(dense), np.isinf(x_ref))
    t_gb = timeit(fixpoint, repeat=3)["min"]
    return result(
        "tropical_full_vs_graphblas", value=t_jax, unit="s", baseline="python-graphblas min_plus vxm fixpoint",
        baseline_value=t_gb, higher_is_better=False, target=">= 10x faster", met=t_gb / t_jax >= 10.0,
        graphblas_iterations=iters, results_agree=bool(ok),
    )


def _cone_sizes(src, dst, n, candidates):
    ptr, order = _topo.csr(src, n)
    dsorted = dst[order]
    out = {}
    for v in candidates:
        seen = np.zeros(n, bool)
        seen[v] = True
        fr = np.array([v])
        while fr.size:
            ch = dsorted[_topo.expand_rows(ptr, fr)]
            ch = np.unique(ch[~seen[ch]])
            seen[ch] = True
            fr = ch
        out[int(v)] = int(seen.sum()) - 1
    return out


def run(quick: bool) -> list[dict]:
    repeat = 3 if quick else 10
    rows: list[dict] = []
    n, m = 100_000, 500_000
    src, dst, w = random_dag(n, m, seed=0)

    # ---- build + compile
    t0 = time.perf_counter()
    g = ShadowPageGraph()
    g.add_dependencies(src, dst, w)
    t1 = time.perf_counter()
    cg = g.compile(semirings.TROPICAL, num_nodes=n)
    t2 = time.perf_counter()
    rows.append(result(
        "build_and_compile_100k_500k", value=t2 - t0, unit="s", baseline="target (host build + compile, no jitted call)",
        baseline_value=2.0, higher_is_better=False, target="<= 2 s", met=t2 - t0 <= 2.0, build_s=t1 - t0, compile_s=t2 - t1,
        edges=g.num_edges, steps=cg.num_steps, edge_slots=int(cg.ell_src.size), block=(cg.width, cg.rows),
    ))

    # ---- full TROPICAL propagation vs the numpy level loop
    rng = np.random.default_rng(1)
    b = _sources(n, 100, rng)
    bj = jnp.asarray(b)
    t_first = time.perf_counter()
    x = np.asarray(propagate(cg, bj))
    t_first = time.perf_counter() - t_first
    ref = NumpyLevels(src, dst, w, n)
    x_np = ref(b)
    tj, tn = None, None
    for _ in range(3):  # interleaved: both see the same load
        a = timeit(_block(lambda: propagate(cg, bj)), repeat=repeat, number=3)
        c = timeit(lambda: ref(b), repeat=repeat)
        tj = a if tj is None or a["min"] < tj["min"] else tj
        tn = c if tn is None or c["min"] < tn["min"] else tn
    t_jax, t_np = tj["min"], tn["min"]
    rows.append(result(
        "tropical_full_100k_500k_vs_numpy_levels", value=t_jax, unit="s", baseline="numpy loop over levels (np.minimum.at)",
        baseline_value=t_np, higher_is_better=False, ratio_as="time", target="<= 0.5x numpy time", met=t_jax <= 0.5 * t_np,
        levels=ref.num_levels, results_equal=bool(np.array_equal(x, x_np)), first_call_s=t_first,
        range_s=_span(tj), baseline_range_s=_span(tn),
    ))

    # ---- vs python-graphblas
    rows.append(_graphblas_case(src, dst, w, n, b, x_np, t_jax, repeat))

    # ---- incremental: one dirty node whose cone holds ~1% of the nodes
    cand = rng.permutation(n)[: 400 if quick else 2000]
    sizes = _cone_sizes(src, dst, n, cand)
    v = min(sizes, key=lambda k: abs(sizes[k] - n // 100))
    xj = propagate(cg, bj)
    for label, new_val in (("every_cone_node_changes", -100.0), ("cutoff", float(np.nanmax(np.where(np.isfinite(b), b, np.nan))) + 50.0)):
        b2 = b.copy()
        b2[v] = new_val
        b2j = jnp.asarray(b2)
        ids = jnp.array([v], jnp.int32)  # node ids: the fast way (a mask costs a pass over it)
        xi, ch = propagate_incremental(cg, xj, b2j, ids)
        exact = bool(np.array_equal(np.asarray(xi), np.asarray(propagate(cg, b2j))))
        ti = tf = None
        for _ in range(3):  # interleaved
            a = timeit(_block(lambda: propagate_incremental(cg, xj, b2j, ids)), repeat=repeat, number=3)
            c = timeit(_block(lambda: propagate(cg, b2j)), repeat=repeat, number=3)
            ti = a if ti is None or a["min"] < ti["min"] else ti
            tf = c if tf is None or c["min"] < tf["min"] else tf
        mask = jnp.zeros(n, bool).at[v].set(True)
        t_mask = timeit(_block(lambda: propagate_incremental(cg, xj, b2j, mask)), repeat=repeat, number=3)["min"]
        rows.append(result(
            f"incremental_1pct_cone_{label}", value=ti["min"], unit="s", baseline="full propagation (same graph, same run)",
            baseline_value=tf["min"], higher_is_better=False, target=">= 10x faster than full (goal 20x)",
            met=tf["min"] / ti["min"] >= 10.0, cone_nodes=sizes[v], changed_nodes=int(np.asarray(ch).sum()), exact=exact,
            range_s=_span(ti), baseline_range_s=_span(tf), dirty_as_mask_s=t_mask,
        ))

    # ---- page widths
    for width, (pn, pm) in ((1, (n, m)), (16, (n, m)), (256, (10_000, 50_000) if quick else (20_000, 100_000))):
        if (pn, pm) == (n, m):
            ps, pd, pw, pcg, pref = src, dst, w, cg, ref
        else:
            ps, pd, pw = random_dag(pn, pm, seed=2)
            pg = ShadowPageGraph()
            pg.add_dependencies(ps, pd, pw)
            pcg = pg.compile(semirings.TROPICAL, num_nodes=pn)
            pref = NumpyLevels(ps, pd, pw, pn)
        pb = _sources(pn, 100, rng, width=width)
        pbj = jnp.asarray(pb)
        same = bool(np.array_equal(np.asarray(propagate(pcg, pbj)), pref(pb)))
        tj = timeit(_block(lambda: propagate(pcg, pbj)), repeat=repeat)
        tn = timeit(lambda: pref(pb), repeat=max(3, repeat // 2))
        rows.append(result(
            f"tropical_pages_width_{width}_{pn // 1000}k_nodes", value=tj["min"], unit="s", baseline="numpy loop over levels (np.minimum.at)",
            baseline_value=tn["min"], higher_is_better=False, ratio_as="time", target="<= 0.5x numpy time", met=tj["min"] <= 0.5 * tn["min"],
            results_equal=same, range_s=_span(tj), baseline_range_s=_span(tn),
        ))
    return rows


if __name__ == "__main__":  # python -m benchmarks.bench_propagation [--full]
    import json
    import sys

    for r in run(quick="--full" not in sys.argv):
        print(json.dumps({k: v for k, v in r.items() if k != "samples"}, default=float))
