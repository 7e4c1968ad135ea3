"""ShadowPageGraph builder: edges, order, levels, cycle detection, compile layout."""

import time

import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb_jax import GraphCycleError, InvalidArgumentError, semirings
from mmsb_jax import graph
from mmsb_jax.graph import ShadowPageGraph


def _snapshot(g):
    a = g.edge_arrays()
    w = [None if d else x for x, d in zip(a["weight"].tolist(), a["default_weight"].tolist())]
    return (a["src"].tolist(), a["dst"].tolist(), w, a["edge_type"].tolist(), g.nodes(), g.topological_order())


def _assert_topo(g):
    pos = {v: i for i, v in enumerate(g.topological_order())}
    assert sorted(pos) == g.nodes()
    for u, v in g.edges():
        assert pos[u] < pos[v], (u, v)


def _assert_cycle(g, cyc, new_edge):
    assert cyc[0] == cyc[-1] and len(cyc) >= 2
    edges = set(g.edges()) | {new_edge}
    for a, b in zip(cyc, cyc[1:]):
        assert (a, b) in edges, (a, b, cyc)
    assert new_edge in set(zip(cyc, cyc[1:]))


def test_basic_edges_order_and_replace():
    g = ShadowPageGraph()
    g.add_dependency(5, 3, weight=2.0)
    g.add_dependency(5, 9)
    g.add_dependency(3, 9, weight=1.5, edge_type="control")
    assert g.edges() == [(5, 3), (5, 9), (3, 9)]
    assert g.weight(5, 9) is None and g.weight(5, 3) == 2.0
    g.add_dependency(5, 3, weight=7.0)  # re-weight keeps the position
    assert g.edges() == [(5, 3), (5, 9), (3, 9)] and g.weight(5, 3) == 7.0
    assert g.parents(9) == [5, 3] and g.children(5) == [3, 9]
    assert g.edge_type(3, 9) == "control"
    g.remove_dependency(5, 9)
    assert g.edges() == [(5, 3), (3, 9)] and not g.has_edge(5, 9)
    assert g.nodes() == [3, 5, 9]
    _assert_topo(g)
    assert g.levels() == [[5], [3], [9]]
    with pytest.raises(InvalidArgumentError):
        g.remove_dependency(5, 9)


def test_bad_arguments():
    g = ShadowPageGraph()
    for bad in (-1, 2**31, 1.5, "a", True):
        with pytest.raises(InvalidArgumentError):
            g.add_dependency(bad, 1)
    with pytest.raises(InvalidArgumentError):
        g.add_dependency(0, 1, edge_type="nope")
    with pytest.raises(InvalidArgumentError):
        g.add_dependency(0, 1, weight=float("nan"))
    with pytest.raises(InvalidArgumentError):
        g.add_dependencies([0, 1], [1])
    with pytest.raises(InvalidArgumentError):
        g.add_dependencies(np.array([0, -3]), np.array([1, 2]))
    assert g.num_edges == 0


def test_self_loop_is_a_cycle():
    g = ShadowPageGraph()
    with pytest.raises(GraphCycleError) as e:
        g.add_dependency(4, 4)
    assert e.value.cycle == [4, 4]
    with pytest.raises(GraphCycleError):
        g.add_dependencies([1, 2], [2, 2])
    assert g.num_edges == 0


def test_single_insert_cycle_reports_path_and_leaves_graph_unchanged():
    g = ShadowPageGraph()
    g.add_dependencies([10, 20, 30, 20], [20, 30, 40, 50])
    g.add_dependency(40, 7, edge_type="gpu_sync")  # ordering edges close cycles too
    before = _snapshot(g)
    with pytest.raises(GraphCycleError) as e:
        g.add_dependency(7, 10)
    assert e.value.cycle == [7, 10, 20, 30, 40, 7]
    _assert_cycle(g, e.value.cycle, (7, 10))
    assert _snapshot(g) == before


def test_bulk_insert_cycle_leaves_graph_unchanged():
    g = ShadowPageGraph()
    g.add_dependencies([0, 1, 2], [1, 2, 3], [1.0, 2.0, 3.0])
    before = _snapshot(g)
    with pytest.raises(GraphCycleError) as e:
        g.add_dependencies(np.array([3, 8, 1]), np.array([8, 9, 0]), np.array([1.0, 1.0, 5.0]))
    _assert_cycle(g, e.value.cycle, (1, 0))
    assert _snapshot(g) == before


def test_bulk_duplicates_and_existing_edges():
    g = ShadowPageGraph()
    g.add_dependencies([0, 1], [1, 2], [1.0, 2.0])
    g.add_dependencies([3, 0, 3], [4, 1, 4], [5.0, 9.0, 6.0])
    assert g.edges() == [(0, 1), (1, 2), (3, 4)]
    assert g.weight(0, 1) == 9.0 and g.weight(3, 4) == 6.0
    g.add_dependencies([5], [6], np.array([np.nan]))
    assert g.weight(5, 6) is None


@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=40))
def test_incremental_order_matches_networkx(pairs):
    """Random single inserts: refused exactly when networkx sees a cycle; order stays valid."""
    g = ShadowPageGraph()
    ref = nx.DiGraph()
    for u, v in pairs:
        ref2 = ref.copy()
        ref2.add_edge(u, v)
        before = _snapshot(g)
        if nx.is_directed_acyclic_graph(ref2):
            g.add_dependency(u, v)
            ref = ref2
        else:
            with pytest.raises(GraphCycleError) as e:
                g.add_dependency(u, v)
            _assert_cycle(g, e.value.cycle, (u, v))
            assert _snapshot(g) == before
        _assert_topo(g)
    assert set(g.edges()) == set(ref.edges())
    lv = g.levels()
    depth = {v: i for i, level in enumerate(lv) for v in level}
    for v in ref.nodes:
        preds = list(ref.predecessors(v))
        assert depth[v] == (1 + max(depth[p] for p in preds) if preds else 0)


@settings(max_examples=20)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=30))
def test_bulk_insert_matches_networkx(pairs):
    us = np.array([p[0] for p in pairs])
    vs = np.array([p[1] for p in pairs])
    ref = nx.DiGraph(list(zip(us.tolist(), vs.tolist())))
    g = ShadowPageGraph()
    if nx.is_directed_acyclic_graph(ref):
        g.add_dependencies(us, vs)
        assert set(g.edges()) == set(ref.edges())
        _assert_topo(g)
    else:
        with pytest.raises(GraphCycleError) as e:
            g.add_dependencies(us, vs)
        cyc = e.value.cycle
        assert cyc[0] == cyc[-1]
        assert all(ref.has_edge(a, b) for a, b in zip(cyc, cyc[1:]))
        assert g.num_edges == 0


def test_remove_node_and_mixed_single_bulk():
    g = ShadowPageGraph()
    g.add_dependencies(np.arange(0, 50), np.arange(1, 51))  # a chain
    g.add_dependency(0, 50)
    with pytest.raises(GraphCycleError):
        g.add_dependency(50, 0)
    g.remove_node(25)
    assert not g.has_edge(24, 25) and 25 not in g.nodes()
    g.add_dependency(50, 24)  # no path 24 -> 50 any more
    _assert_topo(g)
    with pytest.raises(GraphCycleError):
        g.add_dependency(49, 26)
    with pytest.raises(GraphCycleError):
        g.add_dependencies([24], [0])


def test_derive_registration_errors():
    g = ShadowPageGraph()
    g.add_dependency(0, 1)
    with pytest.raises(InvalidArgumentError):
        g.derive(1, lambda a: a, [0])  # 1 already has a data parent
    g.derive(2, lambda a: a, [1])
    with pytest.raises(InvalidArgumentError):
        g.add_dependency(0, 2)
    with pytest.raises(GraphCycleError):
        g.derive(0, lambda a: a, [2])
    assert 0 not in g.derived()
    with pytest.raises(InvalidArgumentError):
        g.remove_dependency(1, 2)
    g.underive(2)
    assert g.edges() == [(0, 1)]


def test_compile_checks_ids_and_layout():
    g = ShadowPageGraph()
    g.add_dependencies([3, 3, 1], [1, 0, 0], [1.0, 2.0, 3.0])
    with pytest.raises(InvalidArgumentError):
        g.compile(semirings.REAL, num_nodes=3)
    cg = g.compile(semirings.REAL, num_nodes=6)
    assert isinstance(cg, graph.CompiledGraph)
    perm = np.asarray(cg.perm)
    assert sorted(perm.tolist()) == list(range(6))
    assert np.array_equal(np.asarray(cg.inv)[perm], np.arange(6))
    row = {int(v): i for i, v in enumerate(perm)}
    assert row[3] < row[1] < row[0]  # rows follow levels
    # the padded edge slots point at the zero row with weight one
    src = np.asarray(cg.ell_src)
    assert (src == cg.num_nodes + cg.rows).sum() >= src.size - 3  # the zero row follows the slack rows
    # static metadata is hashable and the leaves are arrays
    hash((cg.semiring, cg.rows, cg.width, cg.in_width, cg.out_width, cg.derive_fns))
    cg2 = g.compile("real", num_nodes=6)
    assert cg2.buckets == cg.buckets


def test_with_weights_validation():
    g = ShadowPageGraph()
    g.add_dependencies([0, 1], [1, 2], [1.0, 2.0])
    g.add_dependency(0, 2, edge_type="control")
    cg = g.compile(semirings.REAL, num_nodes=3)
    assert int(cg.num_edges) == 3
    cg2 = graph.with_weights(cg, jnp.array([1.0, 1.0, 123.0]))
    assert cg2.weights.shape == cg.weights.shape
    with pytest.raises(InvalidArgumentError):
        graph.with_weights(cg, jnp.ones(2))
    with pytest.raises(InvalidArgumentError):
        graph.with_weights(cg, jnp.ones(3, jnp.int32))
    cgb = g.compile(semirings.BOOLEAN, num_nodes=3)
    with pytest.raises(InvalidArgumentError):
        graph.with_weights(cgb, jnp.ones(3))


def test_bulk_build_and_compile_100k_is_fast():
    rng = np.random.default_rng(0)
    n, m = 100_000, 500_000
    c = rng.integers(1, n, m)
    p = (rng.random(m) * c).astype(np.int64)
    perm = rng.permutation(n)
    t0 = time.perf_counter()
    g = ShadowPageGraph()
    g.add_dependencies(perm[p], perm[c], rng.random(m))
    cg = g.compile(semirings.TROPICAL, num_nodes=n)
    elapsed = time.perf_counter() - t0
    assert g.num_edges > 490_000
    assert cg.ell_src.size >= g.num_edges  # (steps, width, rows) edge slots
    assert elapsed < 15.0, elapsed  # a few seconds on a 2-core machine


def test_refused_remove_node_changes_nothing():
    g = ShadowPageGraph()
    g.derive(1, lambda a: a * 2, parents=[0])
    g.derive(2, lambda a: a + 1, parents=[1])
    b = jnp.array([5.0, 0.0, 0.0])
    before = graph.propagate(g.compile(semirings.REAL, num_nodes=3), b).tolist()
    with pytest.raises(InvalidArgumentError, match="parent of derived node 2"):
        g.remove_node(1)
    assert sorted(g.derived()) == [1, 2] and before == [5.0, 10.0, 11.0]
    assert graph.propagate(g.compile(semirings.REAL, num_nodes=3), b).tolist() == before


def test_incremental_refuses_dirty_ids_outside_the_graph():
    g = ShadowPageGraph()
    g.add_dependencies([0, 1], [1, 2])
    cg = g.compile(semirings.REAL, num_nodes=3)
    b = jnp.array([1.0, 0.0, 0.0])
    x = graph.propagate(cg, b)
    for bad, needle in ((jnp.array([0, 3]), "node id 3"), (jnp.array([-1]), "node id -1")):
        with pytest.raises(InvalidArgumentError, match=needle):
            graph.propagate_incremental(cg, x, b, bad)
    x2, changed = graph.propagate_incremental(cg, x, b.at[1].set(2.0), jnp.array([1]))
    assert x2.tolist() == [1.0, 3.0, 3.0] and changed.tolist() == [False, True, True]


@pytest.mark.parametrize("ws", [[1.0, 2.0], [1.0], [[1.0, 2.0, 3.0]], "x"])
def test_bulk_add_refuses_weights_that_do_not_match_the_edges(ws):
    """ws is None, one scalar, or one weight per edge; a 1-element list was silently spread
    over every edge, others raised a raw numpy ValueError."""
    g = ShadowPageGraph()
    g.add_dependency(5, 6)
    with pytest.raises(InvalidArgumentError, match="weights|ws must be"):
        g.add_dependencies([0, 1, 2], [1, 2, 3], ws)
    assert g.edges() == [(5, 6)]
    g.add_dependencies([0, 1, 2], [1, 2, 3], 2.5)
    assert [g.weight(u, v) for u, v in g.edges()[1:]] == [2.5, 2.5, 2.5]
