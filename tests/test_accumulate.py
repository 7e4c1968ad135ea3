"""Accumulate deltas obey the semiring laws: merging two accumulates equals applying both."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mmsb_jax as mmsb
from mmsb_jax import semirings

INF = math.inf
ALL = semirings.STANDARD + (semirings.soft_tropical(0.1), semirings.soft_tropical(1.0))
PAGE = 6  # page shape (PAGE,): fixed, so every example reuses one compiled function

# Through jit: the deltas are pytrees (payload a leaf, the semiring static).
_apply = jax.jit(mmsb.apply_delta)
_merge = jax.jit(mmsb.merge_deltas)


def _name(sr):
    return sr.name


def _floats(lo, hi):
    return st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _element(sr):
    """One carrier value: ordinary values, or the zero, the one, or an infinity of the carrier."""
    kind = sr.name.split("(")[0]
    values, specials = {
        "real": (_floats(-1e3, 1e3), [0.0, 1.0]),
        "tropical": (_floats(-1e3, 1e3), [INF, 0.0]),
        "max_plus": (_floats(-1e3, 1e3), [-INF, 0.0]),
        "log": (_floats(-50, 50), [-INF, 0.0]),
        "max_times": (_floats(0, 1e3), [0.0, 1.0]),
        "soft_tropical": (_floats(-50, 50), [INF, 0.0]),
        "boolean": (st.booleans(), [False, True]),
    }[kind]
    return st.one_of(values, st.sampled_from(specials))


def _pages(sr, count):
    dtype = np.bool_ if sr.dtype_kind == "bool" else np.float32
    page = st.lists(_element(sr), min_size=PAGE, max_size=PAGE).map(lambda v: np.array(v, dtype))
    return st.tuples(*[page] * count)


def _assert_same(sr, got, want, *operands):
    """Bit-for-bit for idempotent semirings (min/max/or round nothing); otherwise equal up to
    rounding relative to the largest finite magnitude involved, with identical infinities."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    if sr.idempotent:
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
        return
    assert not np.isnan(got).any() and not np.isnan(want).any()
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    arrays = [np.asarray(x, np.float64) for x in (got, want, *operands)]
    scale = np.max([np.where(np.isfinite(x), np.abs(x), 0.0) for x in arrays], axis=0)
    fin = np.isfinite(got)
    tol = 1e-5 * scale[fin] + 1e-6
    assert (np.abs(got[fin].astype(np.float64) - want[fin]) <= tol).all(), (got, want)


@functools.cache
def _sides(sr):
    """One jitted function per semiring (one dispatch per hypothesis example)."""

    def both(p, a1, a2, a3):
        d1, d2, d3 = (mmsb.accumulate_delta(a, sr) for a in (a1, a2, a3))
        d12 = mmsb.merge_deltas(d1, d2)
        left, right = mmsb.merge_deltas(d12, d3), mmsb.merge_deltas(d1, mmsb.merge_deltas(d2, d3))
        assert isinstance(d12, mmsb.AccumulateDelta) and d12.semiring == sr  # at trace time
        return {
            "merged": mmsb.apply_delta(p, d12),
            "twice": mmsb.apply_delta(mmsb.apply_delta(p, d1), d2),
            "left": left.payload,
            "right": right.payload,
            "left_applied": mmsb.apply_delta(p, left),
            "thrice": mmsb.apply_delta(mmsb.apply_delta(mmsb.apply_delta(p, d1), d2), d3),
        }

    return jax.jit(both)


@pytest.mark.parametrize("sr", ALL, ids=_name)
@given(data=st.data())
def test_merge_laws(sr, data):
    """apply(apply(p, a1), a2) == apply(p, merge(a1, a2)), and merge is associative."""
    p, a1, a2, a3 = data.draw(_pages(sr, 4))
    out = _sides(sr)(p, a1, a2, a3)
    _assert_same(sr, out["merged"], out["twice"], p, a1, a2)
    _assert_same(sr, out["left"], out["right"], a1, a2, a3)
    _assert_same(sr, out["left_applied"], out["thrice"], p, a1, a2, a3)


@pytest.mark.parametrize("sr", ALL, ids=_name)
def test_merge_law_eager(sr):
    rng = np.random.default_rng(3)
    dtype = np.bool_ if sr.dtype_kind == "bool" else np.float32
    p, a1, a2 = (
        rng.uniform(0, 3, (3, PAGE)) > 1.5 if dtype == np.bool_ else rng.uniform(0, 3, (3, PAGE))
    ).astype(dtype)
    d1, d2 = mmsb.accumulate_delta(a1, sr), mmsb.accumulate_delta(a2, sr)
    merged = mmsb.merge_deltas(d1, d2)
    assert isinstance(merged, mmsb.AccumulateDelta) and merged.semiring == sr
    _assert_same(sr, mmsb.apply_delta(p, merged), mmsb.apply_delta(mmsb.apply_delta(p, d1), d2), p, a1, a2)


@pytest.mark.parametrize("sr", ALL, ids=_name)
def test_accumulating_the_zero_changes_nothing(sr):
    dtype = jnp.bool_ if sr.dtype_kind == "bool" else jnp.float32
    p = jnp.asarray(np.random.default_rng(0).uniform(0.0, 3.0, PAGE) > 1.0 if dtype == jnp.bool_
                    else np.random.default_rng(0).uniform(0.0, 3.0, PAGE).astype(np.float32))  # fmt: skip
    _assert_same(sr, _apply(p, mmsb.accumulate_delta(sr.zeros(PAGE, dtype), sr)), p, p)


@pytest.mark.parametrize("sr", ALL, ids=_name)
def test_accumulate_under_vmap(sr):
    dtype = np.bool_ if sr.dtype_kind == "bool" else np.float32
    rng = np.random.default_rng(1)
    pages = (
        (rng.uniform(0, 3, (4, PAGE)) > 1.5).astype(dtype)
        if dtype == np.bool_
        else rng.uniform(0, 3, (4, PAGE)).astype(dtype)
    )
    payloads = pages[::-1].copy()
    deltas = mmsb.accumulate_delta(jnp.asarray(payloads), sr)  # a batch of deltas: batched payload
    got = jax.vmap(mmsb.apply_delta)(jnp.asarray(pages), deltas)
    want = jnp.stack(
        [_apply(jnp.asarray(pages[i]), mmsb.accumulate_delta(jnp.asarray(payloads[i]), sr)) for i in range(4)]
    )
    _assert_same(sr, got, want, pages, payloads)


def _overwrites():
    dense = mmsb.dense_delta(
        jnp.array([True, False, True, False, False, True]), jnp.arange(PAGE, dtype=jnp.float32)
    )
    sparse = mmsb.sparse_delta([1, 4], jnp.array([7.0, 8.0], jnp.float32), PAGE)
    return {"dense": dense, "sparse": sparse}


@pytest.mark.parametrize("order", ["accumulate_first", "overwrite_first"])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("sr", [semirings.REAL, semirings.TROPICAL, semirings.LOG], ids=_name)
def test_merging_an_accumulate_with_an_overwrite_raises(sr, kind, order):
    acc = mmsb.accumulate_delta(jnp.ones(PAGE, jnp.float32), sr)
    other = _overwrites()[kind]
    pair = (acc, other) if order == "accumulate_first" else (other, acc)
    with pytest.raises(mmsb.InvalidDeltaError, match="AccumulateDelta"):
        mmsb.merge_deltas(*pair)
    with pytest.raises(mmsb.InvalidDeltaError):
        _merge(*pair)


def test_merging_accumulates_of_different_semirings_raises():
    payload = jnp.ones(PAGE, jnp.float32)
    for a, b in [
        ("real", "tropical"),
        ("tropical", "max_plus"),
        (semirings.soft_tropical(0.1), semirings.soft_tropical(1.0)),
    ]:
        with pytest.raises(mmsb.InvalidDeltaError, match="semirings"):
            mmsb.merge_deltas(mmsb.accumulate_delta(payload, a), mmsb.accumulate_delta(payload, b))
    # equal temperatures give one cached record, so these do merge
    st1 = mmsb.accumulate_delta(payload, semirings.soft_tropical(0.5))
    st2 = mmsb.accumulate_delta(payload, semirings.get_semiring("soft_tropical(0.5)"))
    assert isinstance(mmsb.merge_deltas(st1, st2), mmsb.AccumulateDelta)
