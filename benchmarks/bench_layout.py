"""Layout benchmarks of issue #13 (Layer 5): does ``mmsb.optimize_layout`` pay?

A state of ``n`` float32 pages of width 16 or 256 under TROPICAL, with the edges of a
power-law DAG (``power_law_dag``: Zipf in-degrees, hubs with thousands of children) or a
uniform random DAG (``random_dag``) between page ids in a random order. One full
propagation of the pool (the program every full pass of the state runs, on the pool's
arena) is timed before the re-layout (the baseline, same process), after
``optimize_layout(method="levels")`` and after ``method="rcm"``. The target: full
propagation >= 1.3x faster after the reorder, its cost amortised within 100 passes
(``passes_to_amortise = reorder seconds / seconds saved per pass``). Times are the best of
``repeat`` runs; ``range_s`` gives the spread. Where it does not pay, the row says so.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import mmsb_jax as mmsb
from mmsb_jax.graph import power_law_dag, propagate, random_dag

from ._harness import result, timeit


def _full_pass(state):
    """One full propagation of pool 0 as the state runs it (compiled graph, arena)."""
    pool = state._pools[0]
    cg = state._pool_graphs[0].compiled(pool.capacity)
    arena = pool.array
    return lambda: jax.block_until_ready(propagate(cg, arena))


def _case(name, make, n, width, repeat):
    src, dst, w = make()
    s = mmsb.mmsb_start(semiring="tropical", fsync="never")
    try:
        ids = np.asarray(mmsb.create_pages(s, n, size=width, dtype=jnp.float32))
        mmsb.add_dependencies(s, ids[src], ids[dst], w)
        rng = np.random.default_rng(0)
        k = min(n, 2000)
        roots = rng.choice(ids, k, replace=False)
        cols = np.broadcast_to(np.arange(width, dtype=np.int32), (k, width))
        mmsb.route_sparse_batch(s, roots, cols, rng.random((k, width), np.float32))
        digest = mmsb.state_digest(s)
        t = {"before": timeit(_full_pass(s), repeat=repeat)}
        cost = {}
        for method in ("levels", "rcm"):
            t0 = time.perf_counter()
            mmsb.optimize_layout(s, method=method)
            cost[method] = time.perf_counter() - t0
            t[method] = timeit(_full_pass(s), repeat=repeat)
        assert mmsb.state_digest(s) == digest, "a layout changed what readers see"
    finally:
        mmsb.mmsb_stop(s)
    before, after = t["before"]["min"], t["rcm"]["min"]
    saved = before - after
    passes = cost["rcm"] / saved if saved > 0 else float("inf")
    speedup = before / after
    return result(
        name, value=after, unit="s", baseline="full pass before the re-layout (same state, same run)",
        baseline_value=before, higher_is_better=False,
        target=">= 1.3x faster, amortised within 100 passes", met=speedup >= 1.3 and passes <= 100,
        edges=int(src.size), width=width, levels_s=t["levels"]["min"], levels_speedup=before / t["levels"]["min"],
        reorder_s=cost["rcm"], reorder_levels_s=cost["levels"], passes_to_amortise=passes,
        pays=bool(speedup > 1.0 and passes <= 100),
        range_s={k: [min(v["samples"]), max(v["samples"])] for k, v in t.items()},
    )


def run(quick: bool = False) -> list[dict]:
    n = 20_000 if quick else 100_000
    repeat = 3 if quick else 5
    rows = []
    for width in (16, 256):
        rows.append(_case(f"layout_power_law_{n // 1000}k_width_{width}", lambda: power_law_dag(n, seed=1), n, width, repeat))
    rows.append(_case(f"layout_uniform_random_{n // 1000}k_width_16", lambda: random_dag(n, 5 * n, seed=1), n, 16, repeat))
    return rows
