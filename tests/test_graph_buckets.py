"""Compiled sizes follow the graph: buckets (no recompile for edits inside one), one loop
body whatever the depth, small blocks for small graphs, with_weights refused at trace time,
the generators, and the hybrid Kahn levels."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mmsb
from mmsb_jax import graph, semirings
from mmsb_jax.graph import ShadowPageGraph, chain, deep_dag, propagate, propagate_incremental, random_dag
from mmsb_jax.graph import _incremental, _propagate, _topo
from mmsb_jax.graph._buckets import ceil_quarter_pow2


def _graph(n=200, m=700, seed=0):
    src, dst, w = random_dag(n, m, seed=seed)
    g = ShadowPageGraph()
    g.add_dependencies(src, dst, w)
    return g


def _structure(cg):
    leaves = jax.tree_util.tree_leaves(cg.program_key())
    return jax.tree_util.tree_structure(cg.program_key()), [(a.shape, a.dtype) for a in leaves]


def test_edits_inside_a_bucket_do_not_recompile():
    g = _graph()
    n = 200
    cg = g.compile("tropical", num_nodes=n)
    b = jnp.asarray(np.where(np.random.default_rng(0).random(n) < 0.2, 1.0, np.inf), jnp.float32)
    x = propagate(cg, b)
    propagate_incremental(cg, x, b, jnp.zeros(n, bool).at[0].set(True))
    full0, inc0 = _propagate._propagate_jit._cache_size(), _incremental._incremental_jit._cache_size()
    order = g.topological_order()
    rng = np.random.default_rng(1)
    edits, children = 0, []
    for _ in range(6):  # add edges forward in the order, remove and re-weight some
        i, j = sorted(rng.choice(n, 2, replace=False))
        if not g.has_edge(order[i], order[j]):
            g.add_dependency(order[i], order[j], weight=-5.0)
            edits += 1
            children.append(order[j])
    u, v = g.edges()[3]
    g.remove_dependency(u, v)
    g.add_dependency(*g.edges()[5], weight=2.0)
    children += [v, g.edges()[5][1]]
    cg2 = g.compile("tropical", num_nodes=n)
    assert cg2.buckets == cg.buckets, (cg.buckets, cg2.buckets)
    assert _structure(cg2) == _structure(cg) and cg2.num_edges != cg.num_edges
    x2 = propagate(cg2, b)
    x3, _ = propagate_incremental(cg2, x, b, jnp.zeros(n, bool).at[jnp.array(children)].set(True))  # the edits' cones
    assert _propagate._propagate_jit._cache_size() == full0  # no new program
    assert _incremental._incremental_jit._cache_size() == inc0
    assert edits >= 3 and not np.array_equal(np.asarray(x2), np.asarray(x))  # the edits are there
    np.testing.assert_array_equal(np.asarray(x3), np.asarray(x2))
    # the counter does count: a graph in another bucket compiles a new program
    big = _graph(n, 2000, seed=2).compile("tropical", num_nodes=n)
    assert big.buckets != cg.buckets
    propagate(big, b)
    assert _propagate._propagate_jit._cache_size() == full0 + 1


def test_user_jit_with_the_graph_as_argument_does_not_retrace_for_new_weights():
    g = _graph(64, 200)
    cg = g.compile("real", num_nodes=64)
    traces = []

    @jax.jit
    def f(cg, b):
        traces.append(1)
        return propagate(cg, b)

    b = jnp.ones(64, jnp.float32)
    f(cg, b)
    f(graph.with_weights(cg, jnp.full(g.num_edges, 0.5, jnp.float32)), b)
    assert len(traces) == 1


def test_with_weights_refuses_too_few_weights_under_jit():
    """3 edges, 2 weights: refused at trace time (it used to give the missing edge weight 1)."""
    g = ShadowPageGraph()
    g.add_dependencies([0, 1, 0], [1, 2, 2], [1.0, 2.0, 3.0])
    cg = g.compile("real", num_nodes=3)
    b = jnp.array([1.0, 0.0, 0.0])
    f = jax.jit(lambda cg, w: propagate(graph.with_weights(cg, w), b))
    with pytest.raises(mmsb.InvalidArgumentError, match="num_edges=3"):
        f(cg, jnp.ones(2))
    with pytest.raises(mmsb.InvalidArgumentError, match="num_edges=3"):
        jax.grad(lambda w: propagate(graph.with_weights(cg, w), b).sum())(jnp.ones(4))
    np.testing.assert_allclose(np.asarray(f(cg, jnp.array([1.0, 2.0, 3.0]))), [1.0, 1.0, 5.0])


def _equations(jaxpr) -> int:
    """Equations of a jaxpr, those of its sub-jaxprs (loop bodies, branches) included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _equations(inner)
    return total


def _jaxpr_size(cg, b, grad=False):
    fn = (lambda b: jax.grad(lambda b: propagate(cg, b).sum())(b)) if grad else (lambda b: propagate(cg, b))
    return _equations(jax.make_jaxpr(fn)(b).jaxpr)


def test_compiled_program_does_not_grow_with_depth():
    """One loop body: the traced program of a 311-level graph is as long as a 10-level one's."""
    sizes = []
    for depth in (10, 311):
        src, dst, w = deep_dag(2000, 9398, depth=depth, seed=1)
        g = ShadowPageGraph()
        g.add_dependencies(src, dst, w)
        cg = g.compile("real", num_nodes=2000)
        b = jnp.ones(2000, jnp.float32)
        sizes.append((_jaxpr_size(cg, b), _jaxpr_size(cg, b, grad=True), cg.num_steps))
    (f10, g10, s10), (f311, g311, s311) = sizes
    assert s311 > 300 > s10  # many more steps ...
    assert f311 == f10 and g311 == g10  # ... in one traced body


def test_padding_follows_the_graph():
    g = ShadowPageGraph()  # 8 nodes
    g.add_dependencies([0, 0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7])
    cg = g.compile("real", num_nodes=8)
    assert cg.rows * cg.width <= 4 and cg.in_width <= 2
    src, dst, w = deep_dag()
    gd = ShadowPageGraph()
    gd.add_dependencies(src, dst, w)
    cgd = gd.compile("real", num_nodes=2000)
    assert cgd.rows <= 8 and cgd.width <= 8  # ~6 nodes per level, ~5 parents each
    gc = ShadowPageGraph()
    s, d, _ = chain(500)
    gc.add_dependencies(s, d)
    cgc = gc.compile("tropical", num_nodes=500)
    assert (cgc.rows, cgc.width) == (1, 1) and cgc.num_steps == ceil_quarter_pow2(499, 16)
    big = _graph(20_000, 100_000).compile("real", num_nodes=20_000)
    assert big.rows * big.width >= 1024  # wide levels: big blocks


def test_generators():
    src, dst, w = deep_dag()
    g = ShadowPageGraph()
    g.add_dependencies(src, dst, w)
    assert g.num_edges == 9398 and g.num_nodes == 2000 and len(g.levels()) == 311
    assert w.min() >= 0.1 and w.max() <= 1.0
    s, d, _ = chain(10_000)
    gc = ShadowPageGraph()
    gc.add_dependencies(s, d)
    assert len(gc.levels()) == 10_000 and sorted(gc.topological_order()) == list(range(10_000))
    s, d, _ = random_dag(1000, 5000)
    assert nx.is_directed_acyclic_graph(nx.DiGraph(list(zip(s.tolist(), d.tolist()))))
    with pytest.raises(ValueError):
        deep_dag(10, 5, depth=20)


@settings(max_examples=10)
@given(widths=st.lists(st.integers(1, 120), min_size=2, max_size=8), seed=st.integers(0, 2**31 - 1))
def test_kahn_levels_mixing_narrow_and_wide_levels_match_networkx(widths, seed):
    """Narrow levels are walked in Python, wide ones in numpy; levels are longest paths."""
    rng = np.random.default_rng(seed)
    start = np.concatenate([[0], np.cumsum(widths)])
    n = int(start[-1])
    src, dst = [], []
    for lv in range(1, len(widths)):
        for v in range(start[lv], start[lv + 1]):
            src.append(int(rng.integers(start[lv - 1], start[lv])))  # a parent one level down
            dst.append(v)
            if lv > 1 and rng.random() < 0.5:
                src.append(int(rng.integers(0, start[lv - 1])))
                dst.append(v)
    level, ok = _topo.kahn_levels(np.array(src, np.int64), np.array(dst, np.int64), n)
    assert ok
    G = nx.DiGraph()
    G.add_nodes_from(range(n))
    G.add_edges_from(zip(src, dst))
    for v in nx.topological_sort(G):
        preds = list(G.predecessors(v))
        assert level[v] == (1 + max(level[p] for p in preds) if preds else 0)


def test_builder_accessors():
    g = ShadowPageGraph()
    g.add_dependencies([5, 3], [3, 9])
    assert sorted(g.node_ids().tolist()) == [3, 5, 9] and g.node_ids().dtype == np.int64
    cg = g.compile(semirings.TROPICAL, num_nodes=10)
    assert cg.program_key().num_edges == -1 and cg.program_key() is cg.program_key()
