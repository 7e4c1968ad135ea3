"""Semiring algebra (Layer 2): laws, reductions against numpy, empty cases, jit/vmap/grad."""

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
from mmsb_jax.semirings import (
    LOG,
    MAX_PLUS,
    MAX_TIMES,
    REAL,
    TROPICAL,
    Semiring,
    check_laws,
    soft_tropical,
)

INF = math.inf
SOFT = (soft_tropical(0.1), soft_tropical(1.0))
ALL = semirings.STANDARD + SOFT
FLOAT = tuple(s for s in ALL if s.dtype_kind == "float")


def _name(sr):
    return sr.name


def _x64():
    """Context manager enabling float64 (``jax.enable_x64`` on new jax, experimental on old)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover - older jax

    return enable_x64()


def _floats(lo, hi):
    return st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _domain(sr):
    """(strategy of ordinary values, special values: zero, one, infinities in the carrier)."""
    kind = sr.name.split("(")[0]
    return {
        "real": (_floats(-1e3, 1e3), [0.0, 1.0, -1.0]),
        "tropical": (_floats(-1e3, 1e3), [INF, 0.0, 1.0]),
        "max_plus": (_floats(-1e3, 1e3), [-INF, 0.0, 1.0]),
        "log": (_floats(-50, 50), [-INF, 0.0, 1.0]),
        "max_times": (_floats(0, 1e3), [0.0, 1.0, 0.5]),
        "soft_tropical": (_floats(-50, 50), [INF, 0.0, 1.0]),
        "boolean": (st.booleans(), [False, True]),
    }[kind]


def _random_values(sr, rng, shape, zero_frac=0.2):
    """Random carrier values with some semiring zeros mixed in."""
    if sr.dtype_kind == "bool":
        return rng.random(shape) < 0.4
    lo, hi = (0.0, 5.0) if sr is MAX_TIMES else (-5.0, 5.0)
    x = rng.uniform(lo, hi, shape)
    return np.where(rng.random(shape) < zero_frac, sr.zero, x)


def _finite_part(x):
    return jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))


# Most tests run the records under jit: eager mode compiles every primitive for every shape,
# which is ~10x slower on a shared 2-core machine; the law checks and the graph use jit too.


# --------------------------------------------------------------------------- laws
@pytest.mark.parametrize("sr", ALL, ids=_name)
@given(data=st.data())
def test_standard_semirings_satisfy_laws(sr, data):
    values, specials = _domain(sr)
    samples = data.draw(st.lists(values, min_size=6, max_size=6)) + specials
    report = check_laws(sr, samples)
    assert report.ok, str(report)
    assert "mul_associative" in report.checked and "reduce_fold" in report.checked
    assert ("add_idempotent" in report.checked) == sr.idempotent


@pytest.mark.parametrize("sr", [REAL, TROPICAL, LOG], ids=_name)  # one per reduction kind
def test_laws_hold_in_float64(sr):
    _, specials = _domain(sr)
    rng = np.random.default_rng(0)
    with _x64():
        samples = np.concatenate([rng.uniform(-40.0, 40.0, 6), np.array(specials, np.float64)])
        report = check_laws(sr, samples)
        assert report.dtype == "float64"
        assert report.ok, str(report)


def test_check_laws_catches_subtraction_as_add():
    broken = REAL._replace(name="minus", add=jnp.subtract)
    report = check_laws(broken, [0.0, 1.0, 2.5, -3.0])
    assert not report.ok
    assert {"add_associative", "add_commutative", "add_identity"} <= set(report.failed_laws)
    (first,) = report.failures_of("add_commutative")[:1]
    a, b = first.values
    assert float(first.lhs) == float(a) - float(b) and float(first.rhs) == float(b) - float(a)
    text = str(report)
    assert "'minus'" in text and "add_associative" in text and "a ⊕ b == b ⊕ a" in text
    with pytest.raises(mmsb.SemiringLawError, match="add_commutative") as info:
        report.raise_if_failed()
    assert isinstance(info.value, mmsb.MMSBError) and isinstance(info.value, ValueError)
    assert info.value.report is report
    assert semirings.SemiringLawError is mmsb.SemiringLawError


def test_check_laws_names_the_value_breaking_a_wrong_zero():
    broken = TROPICAL._replace(name="tropical_zero0", zero=0.0)
    report = check_laws(broken, [0.0, 1.0, 3.0])
    assert "add_identity" in report.failed_laws and "zero_annihilates" in report.failed_laws
    bad = report.failures_of("add_identity")[0]
    assert bad.values[0] > 0 and float(bad.lhs) == 0.0 and float(bad.rhs) == bad.values[0]
    assert "zero ⊕ a" in str(bad) and "a=1.0" in str(bad)


@pytest.mark.parametrize(
    "broken, law",
    [
        (REAL._replace(name="real_mul_max", mul=jnp.maximum), "left_distributive"),
        (REAL._replace(name="real_mul_max", mul=jnp.maximum), "mul_identity"),
        (REAL._replace(name="real_claims_idempotent", idempotent=True), "add_idempotent"),
        (TROPICAL._replace(name="tropical_one1", one=1.0), "mul_identity"),
        (MAX_PLUS._replace(name="mp_mul_sub", mul=jnp.subtract, commutative=False), "mul_associative"),
        (MAX_PLUS._replace(name="mp_mul_sub", mul=jnp.subtract), "mul_commutative"),
        (TROPICAL._replace(name="no_empty_min", reduce=lambda x, axis: jnp.min(x, axis=axis)), "reduce_fold"),
        (
            TROPICAL._replace(
                name="empty_is_0",
                segment_reduce=lambda d, i, n: _finite_part(jax.ops.segment_min(d, i, num_segments=n)),
            ),
            "segment_reduce_fold",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_check_laws_catches_broken_records(broken, law):
    report = check_laws(broken, [0.0, 1.0, -2.0, 3.5])
    assert law in report.failed_laws, str(report)
    assert report.counts[law] >= len(report.failures_of(law)) >= 1
    assert law in str(report)


def test_check_laws_reports_empty_case_and_errors():
    no_empty = TROPICAL._replace(name="no_empty_min", reduce=lambda x, axis: jnp.min(x, axis=axis))
    failures = check_laws(no_empty, [1.0, 2.0]).failures_of("reduce_fold")
    assert [f.detail.split(":")[0] for f in failures] == ["empty axis", "empty array"]
    assert all(f.values == () and "raised ValueError" in f.detail for f in failures)
    nan_empty = MAX_PLUS._replace(name="nan_empty", reduce=lambda x, axis: jnp.mean(x, axis=axis))
    report = check_laws(nan_empty, [1.0, 2.0])
    assert {f.detail for f in report.failures_of("reduce_fold")} >= {"empty axis"}


def test_mul_commutativity_only_checked_when_tagged():
    matmul_like = MAX_PLUS._replace(name="mp_mul_sub", mul=jnp.subtract, commutative=False)
    report = check_laws(matmul_like, [0.0, 1.0])
    assert "mul_commutative" in report.skipped and "mul_commutative" not in report.checked


def test_check_laws_tolerance_is_relative_and_exact_is_optional():
    samples = np.array([1e3, -1e3, 1e-3, 0.1, 0.7], np.float32)
    assert check_laws(REAL, samples).ok  # (1e3 + -1e3) + 1e-3 differs from 1e3 + (-1e3 + 1e-3)
    exact = check_laws(REAL, samples, exact=True)
    assert "add_associative" in exact.failed_laws
    assert not check_laws(REAL, samples, rtol=0.0).ok


def test_check_laws_on_no_samples_checks_only_the_empty_cases():
    report = check_laws(TROPICAL, [])
    assert report.ok and report.num_samples == 0
    assert not check_laws(TROPICAL._replace(name="t", reduce=lambda x, axis: jnp.min(x, axis=axis)), []).ok


def test_check_laws_rejects_wrong_arguments():
    with pytest.raises(mmsb.InvalidArgumentError):
        check_laws("tropical", [1.0])
    with pytest.raises(mmsb.InvalidArgumentError, match="not valid carriers"):  # REAL takes bool now
        check_laws(LOG, np.array([True, False]), dtype=jnp.bool_)


#: (max, min): widest paths, built from the record alone (module level: one jit cache).
BOTTLENECK = Semiring(
    name="bottleneck",
    add=jnp.maximum,
    mul=jnp.minimum,
    zero=-INF,
    one=INF,
    segment_reduce=lambda d, i, n: jax.ops.segment_max(d, i, num_segments=n),
    reduce=lambda x, axis: jnp.max(x, axis=axis, initial=-INF),
    idempotent=True,
)


def test_user_defined_bottleneck_semiring():
    report = check_laws(BOTTLENECK, [-INF, INF, 0.0, 2.5, -1.0, 7.0])
    assert report.ok, str(report)
    assert "add_idempotent" in report.checked

    @jax.jit
    def widest(w):  # two parallel 2-hop paths: widths min(3,5)=3 and min(4,1)=1
        hops = BOTTLENECK.mul(w[0::2], w[1::2])
        return BOTTLENECK.reduce(hops, 0)

    assert float(widest(jnp.array([3.0, 5.0, 4.0, 1.0]))) == 3.0
    assert semirings.get_semiring(BOTTLENECK) is BOTTLENECK


@given(samples=st.lists(_floats(-1e3, 1e3), min_size=5, max_size=5))
def test_user_defined_bottleneck_semiring_hypothesis(samples):
    assert check_laws(BOTTLENECK, samples + [-INF, INF]).ok


# --------------------------------------------------------------------------- numpy references
def _np_segment_reduce(sr, data, ids, num_segments):
    data = np.asarray(data)
    out = np.full((num_segments,) + data.shape[1:], sr.zero, data.dtype)
    keep = (ids >= 0) & (ids < num_segments)
    d, i = data[keep], ids[keep]
    kind = sr.name.split("(")[0]
    if kind == "real":
        np.add.at(out, i, d)
    elif kind == "tropical":
        np.minimum.at(out, i, d)
    elif kind in ("max_plus", "max_times"):
        np.maximum.at(out, i, d)
    elif kind == "boolean":
        np.logical_or.at(out, i, d)
    elif kind == "log":
        np.logaddexp.at(out, i, d.astype(np.float64))
    elif kind == "soft_tropical":
        t = float(sr.name[len("soft_tropical(") : -1])
        acc = np.full(out.shape, -INF)
        np.logaddexp.at(acc, i, -d.astype(np.float64) / t)
        out = (-t * acc).astype(data.dtype)
    return out


def _np_reduce(sr, x, axis):
    x = np.asarray(x)
    shape = x.shape[:axis] + x.shape[axis + 1 :]
    moved = np.moveaxis(x, axis, 0)
    return _np_segment_reduce(sr, moved, np.zeros(moved.shape[0], np.int64), 1)[0].reshape(shape)


@pytest.mark.parametrize("sr", ALL, ids=_name)
def test_segment_reduce_and_reduce_match_numpy(sr):
    """Pages of shape (), (3,), (2, 3); empty, all-zero and dropped segments; empty axes."""
    rng = np.random.default_rng(1)
    num_segments = 6  # segments 2 and 5 get nothing; segment 4 only zeros
    ids = np.array([0, 3, 0, 1, 3, 4, 4, 1, 0, -1, 6, 3], np.int32)  # -1 and 6 are dropped
    dtype = np.bool_ if sr.dtype_kind == "bool" else np.float32
    page_shapes = [(), (3,), (2, 3)]
    datas = [_random_values(sr, rng, (ids.shape[0],) + ps).astype(dtype) for ps in page_shapes]
    for data in datas:
        data[ids == 4] = sr.zero
    xs = [_random_values(sr, rng, shape).astype(dtype) for shape in [(4, 5), (0, 3), (3, 0)]]
    axes = (0, 1, -1)

    @jax.jit
    def run(datas, xs):
        return {
            "seg": [sr.segment_reduce(d, jnp.asarray(ids), num_segments) for d in datas],
            "red": [[sr.reduce(x, axis) for axis in axes] for x in xs],
            "no segments": sr.segment_reduce(datas[1], jnp.asarray(ids), 0),
            "no data": sr.segment_reduce(datas[1][:0], jnp.asarray(ids[:0]), 3),
        }

    out = run([jnp.asarray(d) for d in datas], [jnp.asarray(x) for x in xs])
    for page_shape, data, got in zip(page_shapes, datas, out["seg"]):
        got = np.asarray(got)
        want = _np_segment_reduce(sr, data, ids, num_segments)
        assert got.shape == (num_segments,) + page_shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got[[2, 5]], np.full((2,) + page_shape, sr.zero, dtype))
    for x, gots in zip(xs, out["red"]):
        for axis, got in zip(axes, gots):
            got = np.asarray(got)
            want = _np_reduce(sr, x, axis % 2)
            assert got.dtype == dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)
            assert not np.isnan(got).any()
    assert out["no segments"].shape == (0, 3)
    np.testing.assert_array_equal(np.asarray(out["no data"]), np.full((3, 3), sr.zero, dtype))
    assert np.asarray(sr.reduce(jnp.asarray(xs[2]), 1)).shape == (3,)  # eager too


@pytest.mark.parametrize("sr", FLOAT, ids=_name)
def test_segment_reduce_and_reduce_in_float64(sr):
    rng = np.random.default_rng(3)
    ids = np.array([0, 2, 0, 2, 3], np.int32)
    with _x64():
        data = _random_values(sr, rng, (5, 2)).astype(np.float64)

        @jax.jit
        def run(d):
            z = jnp.zeros((3,), jnp.float64)
            return sr.segment_reduce(d, jnp.asarray(ids), 4), sr.reduce(d, 0), sr.add(z, z), sr.mul(z, 1.0)

        seg, red, added, multiplied = run(jnp.asarray(data))
        assert seg.dtype == red.dtype == added.dtype == multiplied.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(seg), _np_segment_reduce(sr, data, ids, 4), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(red), _np_reduce(sr, data, 0), rtol=1e-12)


# --------------------------------------------------------------------------- jit / vmap / grad
@pytest.mark.parametrize("sr", ALL, ids=_name)
def test_jit_with_semiring_as_static_argument(sr):
    traces = []

    @functools.partial(jax.jit, static_argnums=2)
    def run(x, ids, s):
        traces.append(s.name)
        return s.add(s.segment_reduce(x, ids, 3), s.mul(s.reduce(x, 0), s.reduce(x, 0))[None])

    dtype = jnp.bool_ if sr.dtype_kind == "bool" else jnp.float32
    x = jnp.asarray(_random_values(sr, np.random.default_rng(5), (4, 2))).astype(dtype)
    ids = jnp.array([0, 2, 0, 1], jnp.int32)
    first = run(x, ids, sr)
    same = semirings.get_semiring(sr.name) if sr in semirings.STANDARD or "soft" in sr.name else sr
    second = run(x, ids, same)
    assert traces == [sr.name]  # an equal record is a cache hit: no retrace
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    seg, red = _np_segment_reduce(sr, np.asarray(x), np.asarray(ids), 3), _np_reduce(sr, np.asarray(x), 0)
    mul = {"real": np.multiply, "max_times": np.multiply, "boolean": np.logical_and}.get(sr.name, np.add)
    add = _np_segment_reduce(
        sr, np.stack([seg, np.broadcast_to(mul(red, red), seg.shape)]), np.zeros(2, np.int64), 1
    )
    np.testing.assert_allclose(np.asarray(first), add[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sr", ALL, ids=_name)
def test_vmap_over_pages(sr):
    dtype = jnp.bool_ if sr.dtype_kind == "bool" else jnp.float32
    batch = _random_values(sr, np.random.default_rng(6), (3, 5, 2)).astype(dtype)  # (B, E, page)
    ids = np.array([1, 0, 1, 3, 1], np.int32)

    def f(x, y):
        return sr.segment_reduce(x, jnp.asarray(ids), 4), sr.reduce(x, 0), sr.add(x, y), sr.mul(x, y)

    seg, red, added, multiplied = jax.jit(jax.vmap(f, in_axes=(0, None)))(
        jnp.asarray(batch), jnp.asarray(batch[0])
    )
    for i in range(3):
        np.testing.assert_allclose(np.asarray(seg[i]), _np_segment_reduce(sr, batch[i], ids, 4), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(red[i]), _np_reduce(sr, batch[i], 0), rtol=1e-5)
    if sr.idempotent:  # x ⊕ x == x, and batch[0] is x for the first page
        np.testing.assert_array_equal(np.asarray(added[0]), batch[0])
    assert multiplied.shape == added.shape == (3, 5, 2)


def _grad_inputs(sr):
    """Segments: 0 mixed, 1 empty, 2 all zero, 3 a single value; plus a dropped id."""
    z = sr.zero
    data = jnp.array([[1.0, z], [z, z], [2.0, 0.5], [z, z], [z, z], [3.0, z], [4.0, 1.0]], jnp.float32)
    ids = jnp.array([0, 0, 0, 2, 2, 3, 9], jnp.int32)
    return data, ids


@pytest.mark.parametrize("sr", FLOAT, ids=_name)
def test_gradients_finite_for_empty_and_all_zero_segments(sr):
    data, ids = _grad_inputs(sr)

    def seg(d):
        return sr.segment_reduce(d, ids, 5)

    @jax.jit
    def run(d):
        jac = jax.jacrev(seg)(d)  # the gradient of every output, the zero-valued ones included
        g = jax.grad(lambda v: jnp.sum(_finite_part(seg(v))))(d)
        return seg(d), jac, g

    out, jac, g = run(data)
    np.testing.assert_array_equal(np.asarray(out[1]), [sr.zero, sr.zero])  # empty segment
    np.testing.assert_array_equal(np.asarray(out[2]), [sr.zero, sr.zero])  # all-zero segment
    assert np.isfinite(np.asarray(jac)).all()
    assert np.isfinite(np.asarray(g)).all()
    assert not np.asarray(g)[6].any()  # the dropped entry gets nothing
    if math.isinf(sr.zero):  # an all-zero segment's value is masked out, so is its gradient
        assert not np.asarray(g)[[3, 4]].any()


@pytest.mark.parametrize("sr", FLOAT, ids=_name)
def test_gradients_finite_for_reduce_and_add_of_zeros(sr):
    z, one = jnp.float32(sr.zero), jnp.float32(sr.one)

    @jax.jit
    def grads(rows, empty, zv):
        out = {
            "reduce all-zero rows": jax.jacrev(lambda x: sr.reduce(x, 1))(rows),
            "reduce empty axis": jax.jacrev(lambda x: sr.reduce(x, 1))(empty),
            "grad of finite part, empty axis": jax.grad(lambda x: jnp.sum(_finite_part(sr.reduce(x, 1))))(
                empty
            ),
            "add of zero pages": jax.jacrev(sr.add, argnums=(0, 1))(zv, zv),
        }
        for fname, f in (("add", sr.add), ("mul", sr.mul)):
            for args in [(z, z), (z, one), (one, z)]:
                out[f"{fname}{args}"] = jax.grad(f, argnums=(0, 1))(*args)
        return out

    out = grads(
        jnp.full((2, 3), sr.zero, jnp.float32),
        jnp.zeros((2, 0), jnp.float32),
        jnp.full((3,), sr.zero, jnp.float32),
    )
    assert out["grad of finite part, empty axis"].shape == (2, 0)
    for what, g in out.items():
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(g)), (what, g)


def test_log_gradients_are_softmax_weights_and_zero_for_all_minus_inf():
    data = jnp.array([0.0, 0.0, -INF, 1.0, -INF, -INF], jnp.float32)
    ids = jnp.array([0, 0, 0, 1, 2, 2], jnp.int32)
    g = jax.jit(jax.grad(lambda d: jnp.sum(_finite_part(LOG.segment_reduce(d, ids, 3)))))(data)
    np.testing.assert_allclose(np.asarray(g), [0.5, 0.5, 0.0, 1.0, 0.0, 0.0])
    ga, gb = jax.jit(jax.grad(LOG.add, argnums=(0, 1)))(jnp.float32(-INF), jnp.float32(-INF))
    assert float(ga) == 0.0 and float(gb) == 0.0
    x = jnp.array([1.0, 2.0, -INF], jnp.float32)
    g = jax.jit(jax.grad(lambda v: LOG.reduce(v, 0)))(x)
    np.testing.assert_allclose(np.asarray(g), [0.26894143, 0.7310586, 0.0], rtol=1e-6)


@pytest.mark.parametrize("sr", [TROPICAL, MAX_PLUS, MAX_TIMES], ids=_name)
def test_min_max_gradients_pick_the_winner(sr):
    x = jnp.array([2.0, 0.5, 3.0], jnp.float32)
    win = 1 if sr is TROPICAL else 2
    g = jax.jit(jax.grad(lambda v: sr.reduce(v, 0)))(x)
    np.testing.assert_allclose(np.asarray(g), np.eye(3)[win])
    g = jax.jit(jax.grad(lambda v: sr.segment_reduce(v, jnp.zeros(3, jnp.int32), 1)[0]))(x)
    np.testing.assert_allclose(np.asarray(g), np.eye(3)[win])


def test_real_and_log_grad_through_semiring_matrix_vector_product():
    """A semiring mat-vec (segment form) is differentiable end to end."""
    src = jnp.array([0, 1, 2, 0], jnp.int32)
    dst = jnp.array([1, 2, 0, 2], jnp.int32)
    for sr in (REAL, LOG, soft_tropical(0.5)):

        def matvec(w, x, sr=sr):
            return sr.segment_reduce(sr.mul(w, x[src]), dst, 3)

        w = jnp.array([0.1, 0.2, 0.3, 0.4], jnp.float32)
        x = jnp.array([1.0, 2.0, 3.0], jnp.float32)
        gw, gx = jax.jit(jax.grad(lambda w, x: jnp.sum(matvec(w, x)), argnums=(0, 1)))(w, x)
        assert np.isfinite(np.asarray(gw)).all() and np.isfinite(np.asarray(gx)).all()
        assert np.abs(np.asarray(gw)).sum() > 0


# --------------------------------------------------------------------------- soft_tropical
def test_soft_tropical_tends_to_tropical():
    rng = np.random.default_rng(7)
    a = jnp.asarray(rng.uniform(-5, 5, (8, 3)).astype(np.float32))
    b = jnp.asarray(rng.uniform(-5, 5, (8, 3)).astype(np.float32)).at[0].set(INF)
    ids = jnp.array([0, 0, 1, 1, 1, 3, 3, 3], jnp.int32)
    ks = {"add": 2, "segment_reduce": 3, "reduce": 8}  # most operands combined into one value

    def run(sr):
        return jax.jit(
            lambda a, b: {
                "add": sr.add(a, b),
                "segment_reduce": sr.segment_reduce(b, ids, 4),
                "reduce": sr.reduce(a, 0),
            }
        )(a, b)

    hard = run(TROPICAL)
    errors = {op: [] for op in ks}
    for t in [1.0, 0.1, 0.01, 0.001]:
        soft = run(soft_tropical(t))
        for op, k in ks.items():
            h, s_ = np.asarray(hard[op]), np.asarray(soft[op])
            # min - T·log(k) <= soft-min <= min, elementwise; infinities agree exactly
            np.testing.assert_array_equal(np.isinf(s_), np.isinf(h))
            fin = np.isfinite(h)
            diff = h[fin] - s_[fin]
            assert (diff >= -1e-5).all() and (diff <= t * math.log(k) + 1e-5).all(), (op, t)
            errors[op].append(diff.max())
    for op, errs in errors.items():
        assert errs[-1] < 1e-2 and errs == sorted(errs, reverse=True), (op, errs)


def test_soft_tropical_gradients_are_softmin_weights():
    t = 0.5
    sr = soft_tropical(t)
    x = jnp.array([1.0, 1.2, 3.0, INF], jnp.float32)
    g = jax.jit(jax.grad(lambda v: sr.reduce(v, 0)))(x)
    w = np.exp(-np.array([1.0, 1.2, 3.0]) / t)
    np.testing.assert_allclose(np.asarray(g), np.append(w / w.sum(), 0.0), rtol=1e-5, atol=1e-7)
    assert np.isfinite(np.asarray(g)).all() and abs(float(g.sum()) - 1.0) < 1e-5
    ga, gb = jax.jit(jax.grad(sr.add, argnums=(0, 1)))(jnp.float32(1.0), jnp.float32(2.0))
    w = np.exp(-np.array([1.0, 2.0]) / t)
    np.testing.assert_allclose([float(ga), float(gb)], w / w.sum(), rtol=1e-5)
    # the hard min's gradient is one-hot; the soft one spreads weight over near-ties
    assert 0.0 < float(g[1]) < float(g[0]) < 1.0


def test_soft_tropical_records_are_cached_and_hashable():
    a = soft_tropical(0.25)
    assert a is soft_tropical(0.25) is soft_tropical(np.float32(0.25)) is soft_tropical(jnp.float32(0.25))
    assert soft_tropical(1) is soft_tropical(1.0)
    assert a == soft_tropical(0.25) and hash(a) == hash(soft_tropical(0.25))
    assert a != soft_tropical(0.5)
    assert {a: 1}[soft_tropical(0.25)] == 1
    # names round-trip exactly (the log stores the name; replay must rebuild the same record)
    for name_of in (
        a,
        soft_tropical(1.0),
        soft_tropical(0.1),
        soft_tropical(1 / 3),
        soft_tropical(0.1234567),
    ):
        assert semirings.get_semiring(name_of.name) is name_of
    assert (
        soft_tropical(1.0).name == "soft_tropical(1)"
        and soft_tropical(0.1234567).name == "soft_tropical(0.1234567)"
    )
    assert not a.idempotent and a.differentiable and a.zero == INF and a.one == 0.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), INF, "warm", None, 1e-39, 1e-45, 1e-300])
def test_soft_tropical_rejects_bad_temperature(bad):
    """Below float32's smallest normal number T is lost in float32 arithmetic: every sum
    came out NaN (1e-39, 1e-300 were taken)."""
    with pytest.raises(mmsb.InvalidArgumentError, match="temperature"):
        soft_tropical(bad)
    with pytest.raises(mmsb.InvalidArgumentError):
        semirings.get_semiring(f"soft_tropical({bad})")


def test_soft_tropical_at_the_smallest_temperature_is_the_min():
    st = soft_tropical(float(np.finfo(np.float32).tiny))
    a, b = jnp.array([1.0, 1.5, 3.0], jnp.float32), jnp.array([2.0, INF, 3.0], jnp.float32)
    assert np.asarray(st.add(a, b)).tolist() == [1.0, 1.5, 3.0]


# --------------------------------------------------------------------------- record helpers
def test_get_semiring_by_name_and_unknown_name():
    for sr in semirings.STANDARD:
        assert semirings.get_semiring(sr.name) is sr
        assert semirings.get_semiring(sr.name.upper()) is sr
    with pytest.raises(mmsb.InvalidArgumentError, match="'nope'"):
        semirings.get_semiring("nope")
    with pytest.raises(mmsb.InvalidArgumentError):
        semirings.get_semiring("soft_tropical(-1)")


@pytest.mark.parametrize("sr", ALL, ids=_name)
def test_record_helpers(sr):
    z = sr.zeros((2, 3))
    o = sr.ones((2,))
    assert z.shape == (2, 3) and o.shape == (2,)
    assert z.dtype == (jnp.bool_ if sr.dtype_kind == "bool" else jnp.float32)
    np.testing.assert_array_equal(np.asarray(sr.add(z[0], z[1])), np.asarray(z[0]))
    assert sr.accepts(z.dtype)
    # integers: the GraphBLAS-style records only (behaviour changed: int32 used to be refused)
    assert sr.accepts(jnp.int32) == (sr.name in ("real", "tropical", "max_plus", "max_times"))
    np.testing.assert_array_equal(np.asarray(sr.zero_like(o)), np.full((2,), sr.zero, o.dtype))


@pytest.mark.parametrize("sr", [semirings.REAL, semirings.TROPICAL, semirings.MAX_PLUS, semirings.LOG,
                                semirings.soft_tropical(0.5)], ids=lambda s: s.name)
def test_nan_propagates_like_jnp(sr):
    """NaN in, NaN out (as jnp.logaddexp does): a NaN parent never turns into the zero."""
    nan = jnp.float32(jnp.nan)
    assert bool(jnp.isnan(sr.add(nan, jnp.float32(0.0)))) and bool(jnp.isnan(sr.add(jnp.float32(1.0), nan)))
    assert bool(jnp.isnan(sr.reduce(jnp.array([nan, 0.0], jnp.float32), 0)))
    g = mmsb.graph.ShadowPageGraph()
    g.add_dependency(0, 1)
    x = mmsb.graph.propagate(g.compile(sr, num_nodes=2), jnp.array([jnp.nan, 0.0], jnp.float32))
    assert bool(jnp.isnan(x[1]))
    # the empty / all-zero cases still give the zero
    assert float(sr.reduce(jnp.full((3,), sr.zero, jnp.float32), 0)) == sr.zero


def test_a_user_semiring_may_not_take_a_standard_name():
    fake = semirings.TROPICAL._replace(add=jnp.maximum)
    with pytest.raises(mmsb.InvalidArgumentError, match="'tropical' belongs to a standard semiring"):
        mmsb.mmsb_start(semiring=fake)
    mmsb.mmsb_stop(mmsb.mmsb_start(semiring=fake._replace(name="my_tropical")))  # its own name: fine
