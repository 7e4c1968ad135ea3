"""Graph benchmarks of issue #12: compile time at any depth, deep and small graphs under
``jax.grad``, integer pages.

Graphs come from ``mmsb_jax.graph``'s generators: ``deep_dag()`` (2,000 nodes, 9,398 edges,
311 levels: every level gets a node, each non-root node a parent one level down, the other
edges reach 1..8 levels down), ``chain(n)``, ``random_dag(100_000, 500_000)`` (~100 levels).
Every case measures its baseline in the same process; times are the best of ``repeat`` runs
and ``range_s`` gives the spread.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.graph import ShadowPageGraph, chain, deep_dag, propagate, random_dag, with_weights
from mmsb_jax.graph import _topo

from ._harness import result, timeit


def _block(f):
    return lambda: jax.block_until_ready(f())


def _span(t: dict) -> list:
    return [min(t["samples"]), max(t["samples"])]


def _graph(src, dst, w=None):
    g = ShadowPageGraph()
    g.add_dependencies(src, dst, w)
    return g


# --------------------------------------------------------------------------- compile time
def _compile_case(name, make, n, semiring="tropical", grad=False):
    """Host build (add_dependencies + compile) and the first jitted call, fresh each run."""
    def once():
        src, dst, w = make()
        t0 = time.perf_counter()
        g = _graph(src, dst, w)
        cg = g.compile(semiring, num_nodes=n)
        t1 = time.perf_counter()
        b = jnp.ones(n, jnp.float32)
        if grad:
            wv = jnp.asarray(np.nan_to_num(g.edge_arrays()["weight"], nan=1.0), jnp.float32)
            f = jax.jit(jax.grad(lambda w, b: jnp.sum(propagate(with_weights(cg, w), b)), argnums=(0, 1)))
            jax.block_until_ready(f(wv, b))
        else:
            jax.block_until_ready(propagate(cg, b))
        return t1 - t0, time.perf_counter() - t1, cg.num_steps

    jax.clear_caches()
    runs = [once() for _ in range(2)]  # the second run still compiles (a fresh graph object, same program cached)
    host, first, steps = runs[0]
    total = host + first
    return result(
        f"compile_{name}", value=total, unit="s", baseline="target (host build + first jitted call)", baseline_value=2.0,
        higher_is_better=False, target="<= 2 s", met=total <= 2.0, host_build_s=host, first_call_s=first,
        steps=steps, grad=grad, second_graph_same_buckets_s=runs[1][0] + runs[1][1],
    )


# --------------------------------------------------------------------------- deep graph grad
def _level_scan_baseline(src, dst, n):
    """``lax.scan`` over levels of ``jax.ops.segment_sum`` (REAL), edges padded per level."""
    lvl, _ = _topo.kahn_levels(src, dst, n)
    order = np.argsort(lvl[dst], kind="stable")
    bounds = np.searchsorted(lvl[dst][order], np.arange(1, lvl.max() + 2))
    width = int(np.diff(bounds).max())
    depth = bounds.size - 1
    s_idx = np.zeros((depth, width), np.int32)
    d_idx = np.full((depth, width), n, np.int32)  # padding: dropped by segment_sum
    pos = np.full((depth, width), order.size, np.int64)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        s_idx[i, : b - a], d_idx[i, : b - a], pos[i, : b - a] = src[order[a:b]], dst[order[a:b]], order[a:b]

    def prop(w, b):
        wl = jnp.concatenate([w, jnp.zeros(1, w.dtype)])[pos]

        def body(x, lv):
            s, d, ww = lv
            return x + jax.ops.segment_sum(ww * x[s], d, num_segments=n), None

        return jax.lax.scan(body, b, (jnp.asarray(s_idx), jnp.asarray(d_idx), wl))[0]

    return prop, depth


def _deep_grad_case(repeat):
    src, dst, w = deep_dag()
    n = 2000
    g = _graph(src, dst, w)
    cg = g.compile("real", num_nodes=n)
    wv = jnp.asarray(g.edge_arrays()["weight"], jnp.float32)  # g.edges() order: the generator's
    b = jnp.asarray(np.random.default_rng(0).random(n), jnp.float32)
    ours = jax.jit(jax.grad(lambda w, b: jnp.sum(propagate(with_weights(cg, w), b)), argnums=(0, 1)))
    t0 = time.perf_counter()
    go = jax.block_until_ready(ours(wv, b))
    first_ours = time.perf_counter() - t0
    base_prop, depth = _level_scan_baseline(np.asarray(src), np.asarray(dst), n)
    ea = g.edge_arrays()
    assert np.array_equal(ea["src"], src) and np.array_equal(ea["dst"], dst)
    base = jax.jit(jax.grad(lambda w, b: jnp.sum(base_prop(w, b)), argnums=(0, 1)))
    t0 = time.perf_counter()
    gb = jax.block_until_ready(base(wv, b))
    first_base = time.perf_counter() - t0
    agree = all(np.allclose(np.asarray(a), np.asarray(c), rtol=1e-3, atol=1e-3) for a, c in zip(go, gb))
    t_ours = timeit(_block(lambda: ours(wv, b)), repeat=repeat, number=3)
    t_base = timeit(_block(lambda: base(wv, b)), repeat=repeat, number=3)
    return result(
        "deep_311_levels_grad", value=t_ours["min"], unit="s", baseline="lax.scan over levels of jax.ops.segment_sum (same graph)",
        baseline_value=t_base["min"], higher_is_better=False, ratio_as="time", target="<= 1x the baseline", met=t_ours["min"] <= t_base["min"],
        range_s=_span(t_ours), baseline_range_s=_span(t_base), first_call_s=first_ours, baseline_first_call_s=first_base,
        levels=depth + 1, steps=cg.num_steps, block=(cg.width, cg.rows), gradients_agree=bool(agree),
    )


def _small_graph_case(repeat):
    """8 nodes: jit(grad) of propagate vs a dense fixpoint (the padding must follow the graph)."""
    src = np.array([0, 0, 1, 2, 3, 4, 5, 2])
    dst = np.array([1, 2, 3, 4, 5, 6, 7, 7])
    w = np.linspace(0.5, 1.2, src.size)
    g = _graph(src, dst, w)
    cg = g.compile("real", num_nodes=8)
    wv, b = jnp.asarray(w, jnp.float32), jnp.arange(8, dtype=jnp.float32)
    ours = jax.jit(jax.grad(lambda w, b: jnp.sum(propagate(with_weights(cg, w), b)), argnums=(0, 1)))
    depth = len(g.levels())

    def dense(w, b):
        a = jnp.zeros((8, 8), w.dtype).at[src, dst].set(w)
        x = b
        for _ in range(depth):
            x = b + a.T @ x
        return x

    base = jax.jit(jax.grad(lambda w, b: jnp.sum(dense(w, b)), argnums=(0, 1)))
    agree = all(np.allclose(np.asarray(p), np.asarray(q), rtol=1e-5) for p, q in zip(ours(wv, b), base(wv, b)))
    t_ours = timeit(_block(lambda: ours(wv, b)), repeat=repeat, number=50)
    t_base = timeit(_block(lambda: base(wv, b)), repeat=repeat, number=50)
    return result(
        "small_8_nodes_jit_grad", value=t_ours["min"], unit="s", baseline="dense fixpoint (x = b + Aᵀx, depth times), jit(grad)",
        baseline_value=t_base["min"], higher_is_better=False, target="report (was 266 us vs 7 us dense)", met=True,
        range_s=_span(t_ours), baseline_range_s=_span(t_base), block=(cg.width, cg.rows), steps=cg.num_steps,
        gradients_agree=bool(agree),
    )


# --------------------------------------------------------------------------- integer pages
def _integer_pages_cases(repeat, n=100_000, m=500_000):
    src, dst, w = random_dag(n, m, seed=0)
    rng = np.random.default_rng(1)
    tro = _graph(src, dst, w).compile("tropical", num_nodes=n)
    b32 = np.full(n, np.inf, np.float32)
    idx = rng.choice(n, 100, replace=False)
    b32[idx] = rng.uniform(0, 1, 100)
    f32 = jnp.asarray(b32)
    tro_int = _graph(src, dst, np.round(w * 100)).compile("tropical", num_nodes=n)  # integral weights
    bi = jnp.asarray(np.where(np.isfinite(b32), np.round(b32 * 100), np.iinfo(np.int32).max).astype(np.int32))
    real_u8 = _graph(src, dst).compile("real", num_nodes=n)  # weight one: passthrough sums, mod 256
    bu = jnp.asarray(rng.integers(0, 256, n).astype(np.uint8))
    cases = {"float32_tropical": (tro, f32), "int32_tropical": (tro_int, bi), "uint8_real_passthrough": (real_u8, bu)}
    times = {}
    for _ in range(2):  # interleave, keep the best of each
        for name, (cg, bb) in cases.items():
            t = timeit(_block(lambda: propagate(cg, bb)), repeat=repeat, number=3)
            prev = times.get(name)
            times[name] = t if prev is None or t["min"] < prev["min"] else prev
    ref = times["float32_tropical"]["min"]
    rows = []
    for name in ("int32_tropical", "uint8_real_passthrough"):
        t = times[name]
        rows.append(result(
            f"pages_{name}_100k_500k", value=t["min"], unit="s", baseline="float32 TROPICAL full pass (same graph, same run)",
            baseline_value=ref, higher_is_better=False, ratio_as="time", target="within 1.5x of the float32 figure", met=t["min"] <= 1.5 * ref,
            range_s=_span(t), baseline_range_s=_span(times["float32_tropical"]),
        ))
    return rows


# --------------------------------------------------------------------------- rewrites and hubs
def _rewrite_cases(repeat: int, quick: bool) -> list[dict]:
    """``compile(outputs=...)`` (drop what no output reads) and hub steps, each against the
    graph compiled without the rewrite / without hub steps, same run, bit-exact checked."""
    from mmsb_jax.graph import _plan, _rewrite, power_law_dag

    n = 20_000 if quick else 100_000
    rows = []
    src, dst, w = random_dag(n, 5 * n, seed=3)
    g = _graph(src, dst, w)
    outputs = np.random.default_rng(0).choice(n, n // 100, replace=False)
    full = g.compile("tropical", num_nodes=n)
    part = g.compile("tropical", num_nodes=n, outputs=outputs)
    b = jnp.asarray(np.random.default_rng(1).random(n), jnp.float32)
    assert np.array_equal(np.asarray(propagate(full, b))[outputs], np.asarray(propagate(part, b))[outputs])
    tf = timeit(_block(lambda: propagate(full, b)), repeat=repeat)
    tp = timeit(_block(lambda: propagate(part, b)), repeat=repeat)
    read = int(_rewrite.read_by(_plan.edges_of(g), n, outputs).sum())
    rows.append(result(
        f"rewrite_outputs_1pct_{n // 1000}k_{5 * n // 1000}k", value=tp["min"], unit="s",
        baseline="the whole graph compiled (same run)", baseline_value=tf["min"], higher_is_better=False,
        target="report (exact under every semiring)", met=True, nodes_read=read, steps=part.num_steps,
        baseline_steps=full.num_steps, range_s=_span(tp), baseline_range_s=_span(tf),
    ))
    src, dst, w = power_law_dag(n, seed=1)
    g = _graph(src, dst, w)
    hubs = g.compile("tropical", num_nodes=n)
    orig = _plan.hub_chunks
    _plan.hub_chunks = lambda rows: 0
    try:
        plain = g.compile("tropical", num_nodes=n)
    finally:
        _plan.hub_chunks = orig
    for width in (None, 16):
        b = jnp.asarray(np.random.default_rng(2).random((n,) if width is None else (n, width)), jnp.float32)
        assert np.array_equal(np.asarray(propagate(hubs, b)), np.asarray(propagate(plain, b)))
        th = timeit(_block(lambda: propagate(hubs, b)), repeat=repeat)
        tp = timeit(_block(lambda: propagate(plain, b)), repeat=repeat)
        rows.append(result(
            f"hub_steps_power_law_{n // 1000}k_width_{width or 1}", value=th["min"], unit="s",
            baseline="one step per chunk, no hub steps (same graph, same run)", baseline_value=tp["min"],
            higher_is_better=False, target="report (bit-exact with the baseline)", met=True, edges=int(src.size),
            steps=hubs.num_steps, baseline_steps=plain.num_steps, range_s=_span(th), baseline_range_s=_span(tp),
        ))
    return rows


def run(quick: bool) -> list[dict]:
    repeat = 3 if quick else 7
    rows = [
        _compile_case("random_100k_500k", lambda: random_dag(100_000, 500_000, seed=0), 100_000),
        _compile_case("chain_10k", lambda: chain(10_000), 10_000),
        _compile_case("deep_311_levels", lambda: deep_dag(), 2000, semiring="real"),
        _compile_case("deep_311_levels_first_grad", lambda: deep_dag(), 2000, semiring="real", grad=True),
    ]
    if not quick:
        rows.append(_compile_case("chain_100k", lambda: chain(100_000), 100_000))
    rows.append(_deep_grad_case(repeat))
    rows.append(_small_graph_case(repeat))
    rows += _integer_pages_cases(repeat)
    rows += _rewrite_cases(repeat, quick)
    return rows


if __name__ == "__main__":  # python -m benchmarks.bench_graph [--full]
    import json
    import sys

    for r in run(quick="--full" not in sys.argv):
        print(json.dumps({k: v for k, v in r.items() if k != "samples"}, default=float))
