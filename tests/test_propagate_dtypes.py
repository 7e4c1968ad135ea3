"""Propagation on every dtype against a numpy model with the same wrap-around arithmetic, the
weight rule end to end, and the uint8 passthrough under the default REAL semiring."""

import contextlib

import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import semirings
from mmsb_jax._compat import enable_x64
from mmsb_jax.graph import ShadowPageGraph, propagate
from mmsb_jax.semirings import CARRIER_DTYPES

from helpers import assert_bits_equal
from semiring_model import X64_DTYPES, model_propagate, np_semiring, random_dag, random_pages, weights_as

N = 16
PAIRS = [(sr, np.dtype(dt)) for sr in semirings.STANDARD for dt in CARRIER_DTYPES if sr.accepts(dt)]
RTOL = {np.dtype(np.float16): 2e-2, np.dtype(jnp.bfloat16): 8e-2, np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _id(v):
    return v.name if isinstance(v, semirings.Semiring) else str(v)


def _mode(dt):
    return enable_x64() if np.dtype(dt) in X64_DTYPES else contextlib.nullcontext()


def _weights_for(sr, dt):
    """Float weights valid for ``dt`` pages: integers (some of them the semiring's zero) on
    integer and bool pages, plain floats on float pages; never negative for MAX_TIMES (defined
    on values >= 0: a negative weight is refused)."""
    def draw(rng, m):
        if dt.kind == "f":
            return rng.uniform(0.1, 2.0, m)
        lo = 0 if dt.kind in "ub" or sr.nonnegative else -2
        w = rng.integers(lo, 4, m).astype(np.float64)
        return np.where(rng.random(m) < 0.15, float(sr.zero), w)

    return draw


@pytest.mark.parametrize("seed, sr, dt", [(3 + 8 * i, sr, dt) for i, (sr, dt) in enumerate(PAIRS)], ids=_id)
def test_propagation_matches_numpy_model(seed, sr, dt):
    with _mode(dt):
        g, pairs, w = random_dag(seed, N, weights=_weights_for(sr, dt))
        ops = np_semiring(sr.name, dt)
        rng = np.random.default_rng(seed + 1)
        shape = (N,) if seed % 16 == 3 else (N, 3)  # every other pair with 3-element pages
        b = random_pages(rng, dt, shape, ops[2])
        if sr.name == "max_times":  # its domain is x >= 0
            b = np.where(b < 0, -(b + 1), b).astype(dt) if dt.kind == "i" else np.abs(b).astype(dt)
        cg = g.compile(sr, num_nodes=N)
        x = propagate(cg, jnp.asarray(b))
        assert x.dtype == dt and x.shape == shape
        wc = weights_as(sr.name, w, dt, float(sr.zero)).reshape((-1,) + (1,) * (len(shape) - 1))
        want = model_propagate(N, pairs, wc, b, ops)
        if dt.kind in "biu":  # exact: wrap-around arithmetic
            assert_bits_equal(np.asarray(x), want.astype(dt), f"{sr.name} {dt}")
        elif sr.idempotent:  # exact up to the sign of a zero (max(-0.0, 0.0) picks either)
            np.testing.assert_array_equal(np.asarray(x), want.astype(dt), f"{sr.name} {dt}")
        else:
            got, ref = np.asarray(x, np.float64), want.astype(np.float64)
            np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
            fin = np.isfinite(ref)
            np.testing.assert_allclose(got[fin], ref[fin], rtol=RTOL[dt], atol=RTOL[dt])
        if seed % 32 == 3:  # for every other pair: compiled for the page dtype, the same bits
            assert_bits_equal(np.asarray(propagate(g.compile(sr, num_nodes=N, dtype=dt), jnp.asarray(b))), np.asarray(x))


def test_uint8_passthrough_under_default_real():
    """One parent, weight one, child base zero: the child reads its parent's bytes, all 256
    values, through a chain of three."""
    g = ShadowPageGraph()
    g.add_dependency(0, 1)
    g.add_dependency(1, 2)
    cg = g.compile("real", num_nodes=3)
    parent = np.arange(256, dtype=np.uint8)
    b = np.stack([parent, np.zeros(256, np.uint8), np.zeros(256, np.uint8)])
    x = np.asarray(propagate(cg, jnp.asarray(b)))
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x[1], parent)
    np.testing.assert_array_equal(x[2], parent)
    # two parents under REAL on bytes: their sum modulo 256
    g.add_dependency(0, 2)
    x = np.asarray(propagate(g.compile("real", num_nodes=3), jnp.asarray(b)))
    np.testing.assert_array_equal(x[2], (parent.astype(np.int64) * 2 % 256).astype(np.uint8))


def test_integer_pages_refuse_weights_that_do_not_fit():
    g = ShadowPageGraph()
    g.add_dependencies([0, 1], [1, 2], [2.0, 2.5])
    cg = g.compile("real", num_nodes=3)
    b = jnp.array([1, 0, 0], jnp.int32)
    with pytest.raises(mmsb.InvalidArgumentError, match=r"edge #1 .*weight 2\.5.*int32"):
        propagate(cg, b)
    with pytest.raises(mmsb.InvalidArgumentError, match=r"edge \(1, 2\) has weight 2\.5"):
        g.compile("real", num_nodes=3, dtype=np.int32)
    np.testing.assert_allclose(np.asarray(propagate(cg, b.astype(jnp.float32))), [1.0, 2.0, 5.0])  # floats: fine
    g.add_dependency(1, 2, weight=300.0)
    with pytest.raises(mmsb.InvalidArgumentError, match="300"):
        propagate(g.compile("real", num_nodes=3), jnp.zeros(3, jnp.uint8))
    assert np.asarray(propagate(g.compile("real", num_nodes=3), jnp.array([1, 0, 0], jnp.int16))).tolist() == [1, 2, 600]
    # the zero of TROPICAL (inf) is the integer infinity: that edge carries nothing
    t = ShadowPageGraph()
    t.add_dependencies([0, 1], [2, 2], [np.inf, 3.0])
    big = np.iinfo(np.int32).max
    x = propagate(t.compile("tropical", num_nodes=3), jnp.array([0, 5, big], jnp.int32))
    assert np.asarray(x).tolist() == [0, 5, 8]


def test_float64_pages_are_not_rounded_through_float32():
    g = ShadowPageGraph()
    g.add_dependency(0, 1, weight=0.1)
    cg32 = g.compile("real", num_nodes=2)  # outside 64-bit mode: weights stored as float32
    with enable_x64():
        b = jnp.array([1.0, 0.0], jnp.float64)
        with pytest.raises(mmsb.InvalidArgumentError, match="64-bit mode"):
            propagate(cg32, b)
        x = propagate(g.compile("real", num_nodes=2), b)
        assert x.dtype == jnp.float64 and float(x[1]) == 0.1
        x = propagate(g.compile("real", num_nodes=2, dtype=np.float64), b)
        assert float(x[1]) == 0.1
    with pytest.raises(mmsb.InvalidArgumentError, match="64-bit mode"):
        g.compile("real", num_nodes=2, dtype=np.float64)
    g2 = ShadowPageGraph()
    g2.add_dependency(0, 1, weight=0.5)  # a float32 value: exact either way
    cg = g2.compile("real", num_nodes=2)
    with enable_x64():
        assert float(propagate(cg, jnp.array([1.0, 0.0], jnp.float64))[1]) == 0.5


def test_refused_dtypes_say_why():
    g = ShadowPageGraph()
    g.add_dependency(0, 1)
    with pytest.raises(mmsb.InvalidArgumentError, match="would equal its one"):
        propagate(g.compile("max_plus", num_nodes=2), jnp.zeros(2, jnp.uint8))
    with pytest.raises(mmsb.InvalidArgumentError, match="exp and log"):
        propagate(g.compile("log", num_nodes=2), jnp.zeros(2, jnp.int32))
    with pytest.raises(mmsb.InvalidArgumentError, match="would equal its one"):
        g.compile("max_plus", num_nodes=2, dtype=np.uint16)
