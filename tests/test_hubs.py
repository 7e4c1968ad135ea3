"""Hub steps (graph/_plan.py): nodes with many in-edges take their chunks ``hub_chunks`` at
a time. Checked bit-exact against the same graph compiled without hub steps (which takes
one step per chunk, the same association), against a numpy model, under grad and against
incremental propagation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsb_jax import semirings
from mmsb_jax.graph import ShadowPageGraph, _plan, power_law_dag, propagate, propagate_incremental, with_weights
from tests.helpers import assert_bits_equal
from tests.semiring_model import model_propagate


def _graph(n=3000, seed=3, derive=False):
    src, dst, w = power_law_dag(n, seed=seed)
    g = ShadowPageGraph()
    g.add_dependencies(src, dst, w)
    if derive:  # derive groups take kinds 1..G: the hub kind comes after them
        g.add_node(n)
        g.derive(n, lambda a, b: a + b, [0, 1])
        n += 1
    return g, src, dst, w, n


def _without_hubs(monkeypatch, g, sr, n):
    with monkeypatch.context() as m:
        m.setattr(_plan, "hub_chunks", lambda rows: 0)
        cg = g.compile(sr, num_nodes=n)
    assert cg.hub_chunks == 0
    return cg


@pytest.mark.parametrize("sr", ["tropical", "real", "max_plus", "log"])
@pytest.mark.parametrize("width", [None, 3, 40])
def test_hub_steps_are_bit_exact_with_one_step_per_chunk(monkeypatch, sr, width):
    g, src, dst, w, n = _graph(derive=width == 3)
    cg = g.compile(sr, num_nodes=n)
    assert cg.hub_chunks > 0, "the graph must have hubs for this test to mean anything"
    plain = _without_hubs(monkeypatch, g, sr, n)
    assert cg.num_steps < plain.num_steps
    rng = np.random.default_rng(0)
    b = jnp.asarray(rng.random((n,) if width is None else (n, width)), jnp.float32)
    assert_bits_equal(propagate(cg, b), propagate(plain, b))


def test_hub_steps_match_a_numpy_model():
    g, src, dst, w, n = _graph(n=1500, seed=5)
    cg = g.compile("tropical", num_nodes=n)
    assert cg.hub_chunks > 0
    b = np.random.default_rng(1).random(n).astype(np.float64)
    ops = (np.minimum, np.add, np.inf, 0.0)
    pairs = list(zip(src.tolist(), dst.tolist()))
    want = model_propagate(n, pairs, w.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64), ops)
    x = np.asarray(propagate(cg, jnp.asarray(b, jnp.float32)))
    np.testing.assert_allclose(x, want, rtol=1e-5)


def test_hub_steps_under_grad(monkeypatch):
    g, src, dst, w, n = _graph(n=2000, seed=7)
    cg = g.compile("real", num_nodes=n)
    plain = _without_hubs(monkeypatch, g, "real", n)
    assert cg.hub_chunks > 0
    wv = jnp.asarray(w * 0.1, jnp.float32)
    b = jnp.asarray(np.random.default_rng(2).random(n), jnp.float32)

    def loss(c):
        return jax.jit(jax.grad(lambda w, b: jnp.sum(propagate(with_weights(c, w), b)), argnums=(0, 1)))

    gw, gb = loss(cg)(wv, b)
    pw, pb = loss(plain)(wv, b)
    np.testing.assert_allclose(np.asarray(gw), np.asarray(pw), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gb), np.asarray(pb), rtol=1e-5)


def test_incremental_agrees_with_hub_steps():
    g, src, dst, w, n = _graph(n=3000, seed=9)
    cg = g.compile(semirings.TROPICAL, num_nodes=n)
    assert cg.hub_chunks > 0
    rng = np.random.default_rng(3)
    b = rng.random(n).astype(np.float32)
    x = propagate(cg, jnp.asarray(b))
    dirty = np.zeros(n, bool)
    dirty[rng.choice(n, 30, replace=False)] = True
    b2 = np.where(dirty, b * 0.5, b).astype(np.float32)
    got, _ = propagate_incremental(cg, x, jnp.asarray(b2), jnp.asarray(dirty))
    assert_bits_equal(got, propagate(cg, jnp.asarray(b2)))
