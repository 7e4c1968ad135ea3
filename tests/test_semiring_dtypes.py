"""Semirings on every dtype: identities per dtype, refusals, exact laws on integers, the
overflow behaviour, zero annihilation and the weight rule."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mmsb
from mmsb_jax import semirings
from mmsb_jax._compat import enable_x64
from mmsb_jax.semirings import CARRIER_DTYPES, check_laws

from semiring_model import X64_DTYPES, kind, np_semiring

STANDARD = semirings.STANDARD + (semirings.soft_tropical(0.5),)
PAIRS = [(sr, np.dtype(dt)) for sr in STANDARD for dt in CARRIER_DTYPES if sr.accepts(dt)]


def _id(v):
    return v.name if isinstance(v, semirings.Semiring) else str(v)


def _mode(dt):
    return enable_x64() if np.dtype(dt) in X64_DTYPES else contextlib.nullcontext()


# --------------------------------------------------------------------------- identities
EXPECTED = {  # (zero, one) per kind of dtype; None: refused
    "real": {"bool": (False, True), "signed": (0, 1), "unsigned": (0, 1), "float": (0.0, 1.0)},
    "tropical": {"bool": (True, False), "signed": ("max", 0), "unsigned": ("max", 0), "float": (np.inf, 0.0)},
    "max_plus": {"bool": None, "signed": ("min", 0), "unsigned": None, "float": (-np.inf, 0.0)},
    "max_times": {"bool": (False, True), "signed": (0, 1), "unsigned": (0, 1), "float": (0.0, 1.0)},
    "boolean": {"bool": (False, True), "signed": None, "unsigned": None, "float": None},
    "log": {"bool": None, "signed": None, "unsigned": None, "float": (-np.inf, 0.0)},
}


@pytest.mark.parametrize("sr", semirings.STANDARD, ids=_id)
@pytest.mark.parametrize("dt", CARRIER_DTYPES, ids=str)
def test_identities_per_dtype_follow_the_table(sr, dt):
    want = EXPECTED[sr.name][kind(dt)]
    assert sr.accepts(dt) == (want is not None)
    if want is None:
        why = sr.refusal(dt)
        assert f"{dt}" in why and sr.name in why and len(why) > 40  # says which and why
        with pytest.raises(mmsb.InvalidArgumentError, match=str(dt)):
            sr.zero_for(dt)
        return
    zero, one = sr.zero_for(dt), sr.one_for(dt)
    assert zero.dtype == dt and one.dtype == dt
    lim = {"max": np.iinfo(dt).max if dt.kind in "iu" else None, "min": np.iinfo(dt).min if dt.kind in "iu" else None}
    assert zero == lim.get(want[0], want[0]) and one == want[1]
    with _mode(dt):
        assert sr.zeros((2,), dt).dtype == dt and np.asarray(sr.ones((2,), dt))[0] == one


def test_refusals_say_why():
    assert "zero (the smallest value, 0) would equal its one" in semirings.MAX_PLUS.refusal(np.uint8)
    assert "LOR_LOR" in semirings.MAX_PLUS.refusal(np.bool_)
    assert "MAX_TIMES" in semirings.BOOLEAN.refusal(np.uint8)  # the way to get or/and on 0/1 bytes
    assert "exp and log" in semirings.LOG.refusal(np.int32)
    assert semirings.TROPICAL.refusal(np.complex64) is not None and not semirings.REAL.accepts(np.complex64)
    user = semirings.REAL._replace(name="user_real", identities=None)  # a record without identities
    assert user.accepts(np.float16) and not user.accepts(np.int32)
    assert "identities" in user.refusal(np.int32)


# --------------------------------------------------------------------------- laws
def _int_samples(draw, sr, dt):
    """Samples where the law holds exactly: the whole range for REAL (a ring mod 2**bits) and
    for bool; for min/max-plus and max-times, values whose sums / products never overflow."""
    info = np.iinfo(dt)
    if sr.name == "real":
        lo, hi = int(info.min), int(info.max)
    elif sr.name == "max_times":
        lo, hi = 0, int(np.floor(np.sqrt(float(info.max)) / 2))
    else:
        lo, hi = max(int(info.min) // 3 + 1, -(2**40)), min(int(info.max) // 3, 2**40)
    vals = draw(st.lists(st.integers(lo, hi), min_size=5, max_size=5))
    return vals + [sr.zero_for(dt).item(), sr.one_for(dt).item()]


@pytest.mark.parametrize("sr, dt", [p for p in PAIRS if p[1].kind in "biu"], ids=_id)
@settings(max_examples=2)
@given(data=st.data())
def test_laws_hold_exactly_on_integer_and_bool_carriers(sr, dt, data):
    with _mode(dt):
        samples = [False, True] if dt == np.bool_ else _int_samples(data.draw, sr, dt)
        report = check_laws(sr, np.asarray(samples, dt))
        assert report.dtype == str(dt)
        assert report.ok, str(report)


@pytest.mark.parametrize("sr, dt", [p for p in PAIRS if p[1].kind == "f"], ids=_id)
@settings(max_examples=2)
@given(data=st.data())
def test_laws_hold_on_every_float_carrier(sr, dt, data):
    specials = {"real": [0.0, 1.0], "max_times": [0.0, 1.0], "log": [-np.inf, 0.0], "max_plus": [-np.inf, 0.0]}
    lo = 0.0 if sr.name == "max_times" else -4.0
    vals = data.draw(st.lists(st.floats(lo, 4.0, width=16, allow_subnormal=False), min_size=5, max_size=5))
    with _mode(dt):
        report = check_laws(sr, np.asarray(vals + specials.get(sr.name, [np.inf, 0.0]), dt))
        assert report.dtype == str(dt) and report.ok, str(report)


def test_integer_overflow_is_wraparound_and_breaks_distributivity_only_there():
    """int8 TROPICAL: 100 ⊗ 27 lands on the zero 127 (infinity), 100 ⊗ 28 wraps to -128, so
    distributivity fails at those values, exactly as the numpy model computes."""
    t = semirings.TROPICAL
    a, b = jnp.int8(100), jnp.array([27, 28, 1], jnp.int8)
    np.testing.assert_array_equal(np.asarray(jax.jit(t.mul)(a, b)), [127, -128, 101])
    _, mul, _, _ = np_semiring("tropical", np.int8)
    np.testing.assert_array_equal(mul(np.int8(100), np.array([27, 28, 1], np.int8)), [127, -128, 101])
    report = check_laws(t, np.array([100, 27, 28, -3], np.int8))
    assert {"left_distributive", "mul_associative"} <= set(report.failed_laws)
    assert check_laws(t, np.array([10, 27, 28, -3, 127], np.int8)).ok  # no overflow: exact
    # uint8 REAL: a ring modulo 256, every law holds on the whole range
    assert check_laws(semirings.REAL, np.array([0, 1, 200, 255, 17, 128], np.uint8)).ok
    np.testing.assert_array_equal(np.asarray(jax.jit(semirings.REAL.add)(jnp.uint8(200), jnp.uint8(100))), 44)


@pytest.mark.parametrize("sr, dt", PAIRS, ids=_id)
def test_zero_annihilates_on_every_dtype_whole_range(sr, dt):
    """zero ⊗ a == zero == a ⊗ zero for a over the dtype's whole range, overflow included."""
    rng = np.random.default_rng(0)
    with _mode(dt):
        if dt.kind in "iu":
            info = np.iinfo(dt)
            a = np.concatenate([rng.integers(info.min, info.max, 64, dtype=dt, endpoint=True), np.array([info.min, info.max, 0, 1], dt)])
            if sr.name == "max_times":  # its domain is x >= 0
                a = np.where(a < 0, -(a + 1), a).astype(dt)
        elif dt == np.bool_:
            a = np.array([False, True])
        else:
            a = np.concatenate([rng.uniform(-1e3, 1e3, 64), [0.0, 1.0]]).astype(dt)
            if sr.name == "max_times":
                a = np.abs(a)
        z = jnp.full(a.shape, sr.zero_for(dt), dt)
        left, right, added = jax.jit(lambda z, a: (sr.mul(z, a), sr.mul(a, z), sr.add(z, a)))(z, jnp.asarray(a))
        for got in (left, right):
            assert got.dtype == dt
            np.testing.assert_array_equal(np.asarray(got), np.asarray(z))
        np.testing.assert_array_equal(np.asarray(added), a)  # and is the ⊕ identity


@pytest.mark.parametrize("sr, dt", PAIRS, ids=_id)
def test_reductions_keep_the_dtype_and_give_zero_when_empty(sr, dt):
    with _mode(dt):
        ops = np_semiring(sr.name, dt)
        rng = np.random.default_rng(1)
        x = np.asarray(rng.integers(0, 3, (5, 3)) if dt.kind in "biu" else rng.uniform(0, 2, (5, 3))).astype(dt)
        ids = jnp.array([0, 2, 0, 2, 9], jnp.int32)
        seg, red, empty = jax.jit(
            lambda x: (sr.segment_reduce(x, ids, 4), sr.reduce(x, 0), sr.reduce(jnp.zeros((2, 0), dt), 1))
        )(jnp.asarray(x))
        assert seg.dtype == dt and red.dtype == dt
        zero = sr.zero_for(dt)
        seg, red = np.asarray(seg), np.asarray(red)
        np.testing.assert_array_equal(seg[[1, 3]], np.full((2, 3), zero, dt))
        np.testing.assert_array_equal(np.asarray(empty), np.full(2, zero, dt))
        if ops is not None and (sr.idempotent or dt.kind in "biu"):  # exact: any association
            add = ops[0]
            want = add(add(x[0], x[1]), add(x[2], add(x[3], x[4])))
            np.testing.assert_array_equal(red, np.asarray(want, dt))
            np.testing.assert_array_equal(seg[0], np.asarray(add(x[0], x[2]), dt))


# --------------------------------------------------------------------------- weight rule
def test_weight_rule_on_each_kind_of_dtype():
    w = np.array([0.0, 1.0, 3.0, np.inf, -2.0, 2.5])
    t, r = semirings.TROPICAL, semirings.REAL
    vals, bad = semirings.weights_to_carrier(t, w, np.int32)
    np.testing.assert_array_equal(bad, [False, False, False, False, False, True])  # 2.5 is not integral
    np.testing.assert_array_equal(vals[:5], [0, 1, 3, np.iinfo(np.int32).max, -2])  # inf -> INT32_MAX
    vals, bad = semirings.weights_to_carrier(r, w, np.uint8)
    np.testing.assert_array_equal(bad, [False, False, False, True, True, True])  # inf, -2 and 2.5 do not fit
    vals, bad = semirings.weights_to_carrier(r, w, np.bool_)  # bool: the one unless the zero
    np.testing.assert_array_equal(vals, [False, True, True, True, True, True]) and not bad.any()
    vals, _ = semirings.weights_to_carrier(t, w, np.bool_)  # TROPICAL on bool: zero is True (inf)
    np.testing.assert_array_equal(vals, [False, False, False, True, False, False])
    vals, _ = semirings.weights_to_carrier(r, np.array([0.1]), np.float16)
    assert vals.dtype == np.float16 and vals[0] == np.float16(0.1)
    # the same rule under jit
    np.testing.assert_array_equal(np.asarray(semirings.cast_weights(t, jnp.asarray(w[:5], jnp.float32), np.int32)), [0, 1, 3, 2**31 - 1, -2])
    np.testing.assert_array_equal(np.asarray(semirings.cast_weights(t, jnp.array([0, 2**31 - 1], jnp.int32), np.int8)), [0, 127])
    np.testing.assert_array_equal(np.asarray(semirings.cast_weights(r, jnp.array([0.0, 2.0], jnp.float32), np.bool_)), [False, True])
