"""Graph rewriting (issue #13): ``compile(..., outputs=...)`` drops the nodes no output reads.

The outputs (and everything they depend on) are checked bit for bit against the graph
compiled whole, for every standard semiring on a dtype it accepts, under ``grad`` and with
derived nodes; the dropped nodes keep their base values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsb_jax import InvalidArgumentError, semirings
from mmsb_jax.graph import ShadowPageGraph, _plan, _rewrite, propagate, random_dag, with_weights
from tests.helpers import assert_bits_equal

_DTYPE = {"tropical": np.float32, "real": np.float32, "max_plus": np.int32, "max_times": np.float32,
          "boolean": np.bool_, "log": np.float32}


def _graph(n=400, m=1600, seed=0):
    src, dst, w = random_dag(n, m, seed=seed)
    g = ShadowPageGraph()
    g.add_dependencies(src, dst, np.round(w * 4) if seed % 2 else w)
    return g, src, dst


def _pages(rng, n, dt, width=3):
    if dt == np.bool_:
        return jnp.asarray(rng.random((n, width)) < 0.3)
    if np.dtype(dt).kind == "i":
        return jnp.asarray(rng.integers(-50, 50, (n, width)).astype(dt))
    return jnp.asarray(rng.random((n, width)).astype(dt))


@pytest.mark.parametrize("name", sorted(_DTYPE))
def test_outputs_keep_their_values_bit_for_bit(name):
    g, src, dst = _graph(seed=1 if name == "max_plus" else 0)
    n = 400
    sr = semirings.get_semiring(name)
    rng = np.random.default_rng(2)
    outputs = rng.choice(n, 8, replace=False)
    full = g.compile(sr, num_nodes=n)
    part = g.compile(sr, num_nodes=n, outputs=outputs)
    assert part.num_edges == full.num_edges  # with_weights takes the same weights
    assert int(np.asarray(part.step_count).sum()) < int(np.asarray(full.step_count).sum())
    b = _pages(rng, n, _DTYPE[name])
    x_full, x_part = np.asarray(propagate(full, b)), np.asarray(propagate(part, b))
    read = _rewrite.read_by(_plan.edges_of(g), n, outputs)
    assert read[outputs].all() and not read.all()
    assert_bits_equal(x_part[read], x_full[read])
    assert_bits_equal(x_part[~read], np.asarray(b)[~read])  # not computed: the base values


def test_outputs_under_grad_and_with_derived_nodes():
    g, src, dst = _graph(n=300, m=900, seed=4)
    g.add_node(300)
    g.derive(300, lambda a, b: a * b, [int(dst[0]), int(dst[1])])
    n = 301
    full = g.compile("real", num_nodes=n)
    part = g.compile("real", num_nodes=n, outputs=[300])
    w = jnp.asarray(np.random.default_rng(5).uniform(0.1, 0.5, g.num_edges), jnp.float32)
    b = jnp.asarray(np.random.default_rng(6).random(n), jnp.float32)

    def grads(cg):
        return jax.grad(lambda w, b: propagate(with_weights(cg, w), b)[300], argnums=(0, 1))(w, b)

    (gw_f, gb_f), (gw_p, gb_p) = grads(full), grads(part)
    assert_bits_equal(propagate(part, b)[300], propagate(full, b)[300])
    np.testing.assert_allclose(np.asarray(gw_p), np.asarray(gw_f), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gb_p), np.asarray(gb_f), rtol=1e-6)


def test_bad_outputs_are_refused():
    g, _, _ = _graph(n=10, m=20)
    for bad in ([10], [-1], [0.5], [True]):
        with pytest.raises(InvalidArgumentError, match="outputs"):
            g.compile("tropical", num_nodes=10, outputs=bad)
    cg = g.compile("tropical", num_nodes=10, outputs=[])
    b = jnp.arange(10.0)
    assert_bits_equal(propagate(cg, b), b)  # nothing is read: nothing is computed
