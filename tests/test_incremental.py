"""Incremental propagation == full propagation: every semiring, several dtypes, random DAGs
and dirty sets (ids and masks), edge edits, hubs, jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb_jax import semirings
from mmsb_jax.graph import ShadowPageGraph, propagate, propagate_incremental
from mmsb_jax.graph._incremental import _incremental_jit

from helpers import as_bits, assert_bits_equal
from semiring_model import random_dag, random_pages

N = 16
DTYPES = [np.dtype(d) for d in (np.float32, np.int32, np.uint8, np.bool_, jnp.bfloat16)]
CASES = [(sr, dt) for sr in semirings.STANDARD + (semirings.soft_tropical(0.5),) for dt in DTYPES if sr.accepts(dt)]


def _core(sr, dt) -> bool:
    """The cases every run checks (each semiring on float32, the integer and bool carriers the
    README names); the whole semiring x dtype product runs with ``-m slow`` (each case
    compiles its own programs: ~5 s apiece here)."""
    return dt == np.float32 or (sr.name, dt.name) in {("tropical", "int32"), ("real", "uint8"), ("boolean", "bool"),
                                                       ("max_plus", "int32"), ("real", "bfloat16")}


SAMPLED = [pytest.param(sr, dt, marks=() if _core(sr, dt) else pytest.mark.slow) for sr, dt in CASES]


def _id(v):
    return v.name if isinstance(v, semirings.Semiring) else str(v)


def _draw_weights(sr, dt):
    def draw(rng, m):
        if jnp.issubdtype(dt, jnp.floating):  # (bfloat16's numpy kind is "V")
            return rng.uniform(0.1, 2.0, m)
        # max_times is defined on values >= 0: its graphs refuse negative weights
        w = rng.integers(0 if dt.kind in "ub" or sr.nonnegative else -2, 4, m).astype(np.float64)
        return np.where(rng.random(m) < 0.1, float(sr.zero), w)

    return draw


def _pages(sr, dt, rng, shape=(N,)):
    b = random_pages(rng, dt, shape, sr.zero_for(dt))
    floating = jnp.issubdtype(dt, jnp.floating)
    if sr.name == "max_times" and (floating or dt.kind == "i"):  # its domain is x >= 0
        b = np.abs(b).astype(dt) if floating else np.where(b < 0, -(b + 1), b).astype(dt)
    if dt.kind == "f" and not sr.idempotent:  # keep REAL / LOG sums in a moderate range
        b = np.clip(b, -2.0, 2.0).astype(dt)
    return b


def assert_matches_full(sr, dt, x, changed, ref, x_old):
    """Bit for bit for idempotent semirings and integer / bool pages; REAL / LOG / soft on
    floats may differ in the last bits (the two programs associate sums differently)."""
    x, ref, x_old, changed = np.asarray(x), np.asarray(ref), np.asarray(x_old), np.asarray(changed)
    page_axes = tuple(range(1, x.ndim))
    if sr.idempotent or dt.kind in "biu":
        assert_bits_equal(x, ref)
    else:
        np.testing.assert_allclose(x.astype(np.float64), ref.astype(np.float64), rtol=3e-2 if dt.itemsize == 2 else 1e-5, atol=1e-5)
    np.testing.assert_array_equal(changed, (as_bits(x) != as_bits(x_old)).any(axis=page_axes) if page_axes else as_bits(x) != as_bits(x_old))


@pytest.mark.parametrize("sr, dt", SAMPLED, ids=_id)
@settings(max_examples=3)
@given(seed=st.integers(0, 2**31 - 1), as_mask=st.booleans())
def test_incremental_equals_full_every_semiring(sr, dt, seed, as_mask):
    # one graph per case (one compiled program); hypothesis draws pages and dirty sets (the
    # graphs vary in tests/test_propagate.py::test_incremental_equals_full)
    g, _, _ = random_dag(101 + CASES.index((sr, dt)), N, weights=_draw_weights(sr, dt))
    cg = g.compile(sr, num_nodes=N)
    rng = np.random.default_rng(seed)
    b_old = _pages(sr, dt, rng)
    dirty = rng.random(N) < rng.choice([0.05, 0.25, 0.6])
    b_new = b_old.copy()
    b_new[dirty] = _pages(sr, dt, rng)[dirty]
    x_old = propagate(cg, jnp.asarray(b_old))
    ref = propagate(cg, jnp.asarray(b_new))
    d = jnp.asarray(dirty) if as_mask else jnp.asarray(np.flatnonzero(dirty), jnp.int32)
    x, changed = propagate_incremental(cg, x_old, jnp.asarray(b_new), d)
    assert x.dtype == dt
    assert_matches_full(sr, dt, x, changed, ref, x_old)


@pytest.mark.parametrize("sr, dt", [(semirings.TROPICAL, np.dtype(np.float32)), (semirings.REAL, np.dtype(np.int32)),
                                    (semirings.BOOLEAN, np.dtype(np.bool_)), (semirings.MAX_PLUS, np.dtype(np.int8))], ids=_id)
@settings(max_examples=4)
@given(seed=st.integers(0, 2**31 - 1), edit=st.sampled_from(["add", "remove", "reweight"]))
def test_incremental_is_exact_after_an_edge_edit_into_child(sr, dt, seed, edit):
    """propagate_incremental(new_cg, x_old, b, dirty=[child]) after editing edges into child.

    One base graph of 64 nodes: a single edit mostly stays inside every bucket, so the
    examples share compiled programs (as the state store's edits do)."""
    g, pairs, _ = random_dag(7, 64, max_edges=160, weights=_draw_weights(sr, dt))
    rng = np.random.default_rng(seed)
    b = jnp.asarray(_pages(sr, dt, rng, (64,)))
    x_old = propagate(g.compile(sr, num_nodes=64), b)
    order = g.topological_order()
    if edit == "remove" and pairs:
        u, child = pairs[int(rng.integers(len(pairs)))]
        g.remove_dependency(u, child)
    elif edit == "reweight" and pairs:
        u, child = pairs[int(rng.integers(len(pairs)))]
        g.add_dependency(u, child, weight=float(rng.integers(0, 3)) if dt.kind != "b" else True)
    else:
        i, j = sorted(rng.choice(len(order), 2, replace=False))
        u, child = order[i], order[j]  # forward in the order: never a cycle
        g.add_dependency(u, child, weight=1.0 if dt.kind != "b" else True)
    cg = g.compile(sr, num_nodes=64)
    x, changed = propagate_incremental(cg, x_old, b, jnp.array([child], jnp.int32))
    assert_matches_full(sr, dt, x, changed, propagate(cg, b), x_old)


def test_hub_tiers_and_the_heavy_fallback_are_exact():
    """In-degree and out-degree hubs (more than one table row) take the second tier; a node
    with more rows than a round reads takes the exact full-pass fallback."""
    rng = np.random.default_rng(0)
    n = 300
    src, dst = [], []
    for v in range(1, 200):  # a chain-ish DAG with mean degree ~2
        src += [v - 1] + rng.integers(0, v, 1).tolist()
        dst += [v, v]
    src += list(range(10, 50))  # node 250: in-degree 40
    dst += [250] * 40
    src += [5] * 90  # node 5: 90 children
    dst += list(range(200, 290))
    g = ShadowPageGraph()
    key = np.unique(np.array(src) * n + np.array(dst))
    g.add_dependencies(key // n, key % n, rng.uniform(0.1, 1.0, key.size))
    cg = g.compile("tropical", num_nodes=n)
    assert cg.in_hub_rows > 1 and cg.out_hub_rows > 1  # the hub tiers exist
    b = np.where(rng.random(n) < 0.3, rng.uniform(0, 5, n), np.inf).astype(np.float32)
    x_old = propagate(cg, jnp.asarray(b))
    for v in (5, 12, 0, 250, 120):
        b2 = b.copy()
        b2[v] = -1.0
        x, changed = propagate_incremental(cg, x_old, jnp.asarray(b2), jnp.array([v], jnp.int32))
        ref = propagate(cg, jnp.asarray(b2))
        assert_bits_equal(np.asarray(x), np.asarray(ref))
        np.testing.assert_array_equal(np.asarray(changed), as_bits(ref) != as_bits(x_old))


def test_incremental_under_jit_and_vmap():
    sr = semirings.TROPICAL
    g, _, _ = random_dag(5, N)
    cg = g.compile(sr, num_nodes=N)
    rng = np.random.default_rng(1)
    bs = np.where(rng.random((3, N)) < 0.4, rng.uniform(0, 3, (3, N)), np.inf).astype(np.float32)
    x_old = jax.vmap(lambda b: propagate(cg, b))(jnp.asarray(bs))
    new = bs.copy()
    new[:, :4] = 0.5

    @jax.jit
    def step(cg, x_old, b_new, dirty):
        return jax.vmap(lambda xo, bn: propagate_incremental(cg, xo, bn, dirty))(x_old, b_new)

    x, changed = step(cg, x_old, jnp.asarray(new), jnp.arange(4, dtype=jnp.int32))
    for i in range(3):
        ref = propagate(cg, jnp.asarray(new[i]))
        assert_bits_equal(np.asarray(x[i]), np.asarray(ref))
        np.testing.assert_array_equal(np.asarray(changed[i]), as_bits(ref) != as_bits(x_old[i]))
    # a traced capacity overflow takes the in-program fallback, still exact
    xs, _ = jax.jit(lambda d: propagate_incremental(cg, x_old[0], jnp.asarray(new[0]), d, capacity=1))(jnp.arange(4, dtype=jnp.int32))
    assert_bits_equal(np.asarray(xs), np.asarray(propagate(cg, jnp.asarray(new[0]))))


def test_duplicate_and_out_of_range_dirty_ids():
    g, _, _ = random_dag(7, N)
    cg = g.compile("tropical", num_nodes=N)
    b = jnp.asarray(np.linspace(0, 1, N, dtype=np.float32))
    x_old = propagate(cg, b)
    b2 = b.at[3].set(-1.0)
    ids = jnp.array([3, 3, 3], jnp.int32)
    assert_bits_equal(np.asarray(propagate_incremental(cg, x_old, b2, ids)[0]), np.asarray(propagate(cg, b2)))
    traced = jax.jit(lambda d: propagate_incremental(cg, x_old, b2, d)[0])(jnp.array([3, N + 5, -2], jnp.int32))
    assert_bits_equal(np.asarray(traced), np.asarray(propagate(cg, b2)))  # ignored under jit


def test_work_follows_the_cone():
    """A dirty leaf recomputes one node; a cutoff stops after the first round."""
    n = 2000
    g = ShadowPageGraph()
    g.add_dependencies(np.arange(n - 1), np.arange(1, n))  # a chain
    cg = g.compile("tropical", num_nodes=n)
    b = jnp.zeros(n, jnp.float32)
    x = propagate(cg, b)
    leaf = jnp.array([n - 1], jnp.int32)
    stats = _incremental_jit(cg.program_key(), x, b.at[n - 1].set(-1.0), leaf, 64, 16, "stats")
    assert int(stats["recomputed"]) == 1 and int(stats["rounds"]) == 1
    stats = _incremental_jit(cg.program_key(), x, b.at[10].set(5.0), jnp.array([10], jnp.int32), 64, 16, "stats")
    assert int(stats["recomputed"]) == 1  # x[10] = min(5, x[9] ⊗ one) = 0: unchanged, cutoff
    stats = _incremental_jit(cg.program_key(), x, b.at[10].set(-5.0), jnp.array([10], jnp.int32), 64, 16, "stats")
    assert int(stats["recomputed"]) == n - 10 and not bool(stats["overflow"])
