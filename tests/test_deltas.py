"""The pure delta core (Layer 1): apply/merge laws against a plain-numpy model, jit, vmap, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import as_bits
from hypothesis import example, given
from hypothesis import strategies as st

import mmsb_jax as mmsb
from mmsb_jax import InvalidDeltaError
from mmsb_jax.deltas._delta import bit_equal, last_writer_mask
from mmsb_jax.semirings import BOOLEAN, TROPICAL

DTYPES = (np.uint8, np.int32, np.float32, np.bool_)
SHAPES = ((6,), (2, 3))
KINDS = ("dense", "sparse")
K = 5  # entries of every random sparse delta (one length, so compiled shapes are reused)
SPECIAL_FLOATS = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1.0], np.float32)


# --------------------------------------------------------------------------- helpers
def _dt(dtype):
    return np.dtype(dtype)


def rand_array(rng, shape, dtype):
    """Random values covering the dtype's range (floats include NaN, +-0.0, +-inf)."""
    dtype = _dt(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    out = (rng.standard_normal(shape) * 100).astype(dtype)
    special = rng.random(shape) < 0.2
    out[special] = rng.choice(SPECIAL_FLOATS, size=int(special.sum()))
    return out




def assert_bits_equal(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_array_equal(as_bits(got), as_bits(want))


class NpDelta:
    """A numpy description of a dense or sparse delta, with its mmsb counterpart."""

    def __init__(self, kind, shape, dtype, rng, k=None):
        """``k``: entries of a sparse delta (default ``K``)."""
        self.kind, self.shape, self.dtype = kind, tuple(shape), _dt(dtype)
        n = int(np.prod(shape))
        if kind == "dense":
            self.mask = rng.random(shape) < 0.5
            self.payload = rand_array(rng, shape, dtype)
        else:
            k = K if k is None else k
            # half the time only a few distinct targets, so that repeats are common
            hi = max(1, n // 2) if rng.random() < 0.5 else n
            self.indices = rng.integers(0, hi, size=k).astype(np.int32)
            self.values = rand_array(rng, (k,), dtype)

    def to_mmsb(self):
        if self.kind == "dense":
            return mmsb.dense_delta(jnp.asarray(self.mask), jnp.asarray(self.payload))
        return mmsb.sparse_delta(self.indices, jnp.asarray(self.values), self.shape)

    def apply_np(self, page):
        out = np.array(page, copy=True)
        if self.kind == "dense":
            out[self.mask] = self.payload[self.mask]
        else:
            flat = out.reshape(-1)
            for i, v in zip(self.indices.tolist(), self.values):
                flat[i] = v  # in order: the last entry of a repeated index wins
        return out


def stack(deltas):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *deltas)


params_dtype_shape = pytest.mark.parametrize("shape", SHAPES, ids=str)
params_dtype = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: _dt(d).name)


# --------------------------------------------------------------------------- apply
@params_dtype
@params_dtype_shape
@pytest.mark.parametrize("kind", KINDS)
@given(seed=st.integers(0, 2**32 - 1))
def test_apply_matches_numpy_model(kind, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    page = rand_array(rng, shape, dtype)
    d = NpDelta(kind, shape, dtype, rng)
    got = mmsb.apply_delta(jnp.asarray(page), d.to_mmsb())
    assert_bits_equal(got, d.apply_np(page))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sparse_repeated_index_last_entry_wins(shape):
    n = int(np.prod(shape))
    idx = [n - 1, 0, n - 1, 1, 0, n - 1]
    vals = jnp.array([1, 2, 3, 4, 5, 6], jnp.int32)
    got = np.asarray(mmsb.apply_delta(jnp.zeros(shape, jnp.int32), mmsb.sparse_delta(idx, vals, shape)))
    want = np.zeros(n, np.int32)
    want[[0, 1, n - 1]] = [5, 4, 6]
    np.testing.assert_array_equal(got.reshape(-1), want)


@example(idx=[])
@example(idx=[3])
@given(idx=st.lists(st.integers(0, 5), min_size=8, max_size=8))
def test_last_writer_mask_brute_force(idx):
    got = np.asarray(last_writer_mask(jnp.asarray(np.array(idx, np.int32))))
    want = np.array([all(idx[j] != idx[i] for j in range(i + 1, len(idx))) for i in range(len(idx))], bool)
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- merge laws
@params_dtype
@pytest.mark.parametrize("kinds", list(itertools.product(KINDS, KINDS)), ids="-".join)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES))
def test_merge_law_eager(kinds, dtype, seed, shape):
    rng = np.random.default_rng(seed)
    page = rand_array(rng, shape, dtype)
    d1, d2 = (NpDelta(k, shape, dtype, rng) for k in kinds)
    want = d2.apply_np(d1.apply_np(page))
    p = jnp.asarray(page)
    m1, m2 = d1.to_mmsb(), d2.to_mmsb()
    assert_bits_equal(mmsb.apply_delta(mmsb.apply_delta(p, m1), m2), want)
    merged = mmsb.merge_deltas(m1, m2)
    assert_bits_equal(mmsb.apply_delta(p, merged), want)
    expected_type = mmsb.SparseDelta if kinds == ("sparse", "sparse") else mmsb.DenseDelta
    assert type(merged) is expected_type


@params_dtype
@params_dtype_shape
@given(seed=st.integers(0, 2**32 - 1), kinds=st.tuples(*[st.sampled_from(KINDS)] * 3))
def test_merge_associative(shape, dtype, seed, kinds):
    rng = np.random.default_rng(seed)
    page = rand_array(rng, shape, dtype)
    ds = [NpDelta(k, shape, dtype, rng) for k in kinds]
    want = ds[2].apply_np(ds[1].apply_np(ds[0].apply_np(page)))
    a, b, c = (d.to_mmsb() for d in ds)
    p = jnp.asarray(page)
    left = mmsb.merge_deltas(mmsb.merge_deltas(a, b), c)
    right = mmsb.merge_deltas(a, mmsb.merge_deltas(b, c))
    assert_bits_equal(mmsb.apply_delta(p, left), want)
    assert_bits_equal(mmsb.apply_delta(p, right), want)


def _seq_and_merged(p, a, b):
    return mmsb.apply_delta(mmsb.apply_delta(p, a), b), mmsb.apply_delta(p, mmsb.merge_deltas(a, b))


@jax.jit
def _jit_and_vmap(page, d1, d2, pages, d1s, d2s):
    """Sequential and merged application, on one page and (vmap) on a batch of pages."""
    return _seq_and_merged(page, d1, d2), jax.vmap(_seq_and_merged)(pages, d1s, d2s)


@params_dtype
@pytest.mark.parametrize("kinds", list(itertools.product(KINDS, KINDS)), ids="-".join)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES))
def test_merge_law_under_jit_and_vmap(kinds, dtype, seed, shape):
    rng = np.random.default_rng(seed)
    B = 3
    page = rand_array(rng, shape, dtype)
    d1, d2 = (NpDelta(k, shape, dtype, rng) for k in kinds)
    pages = np.stack([rand_array(rng, shape, dtype) for _ in range(B)])
    d1s = [NpDelta(kinds[0], shape, dtype, rng) for _ in range(B)]
    d2s = [NpDelta(kinds[1], shape, dtype, rng) for _ in range(B)]
    (seq, merged), (vseq, vmerged) = _jit_and_vmap(
        jnp.asarray(page),
        d1.to_mmsb(),
        d2.to_mmsb(),
        jnp.asarray(pages),
        stack([d.to_mmsb() for d in d1s]),
        stack([d.to_mmsb() for d in d2s]),
    )
    want = d2.apply_np(d1.apply_np(page))
    assert_bits_equal(seq, want)
    assert_bits_equal(merged, want)
    vwant = np.stack([b.apply_np(a.apply_np(p)) for p, a, b in zip(pages, d1s, d2s)])
    assert_bits_equal(vseq, vwant)
    assert_bits_equal(vmerged, vwant)


@pytest.mark.parametrize("semiring", [TROPICAL, BOOLEAN], ids=lambda s: s.name)
@given(seed=st.integers(0, 2**32 - 1))
def test_merge_accumulate_idempotent_semirings(semiring, seed):
    rng = np.random.default_rng(seed)
    dtype = np.bool_ if semiring is BOOLEAN else np.float32
    page, a, b = (rand_array(rng, (5,), dtype) for _ in range(3))
    if dtype == np.float32:  # min with NaN is not what this law is about
        page, a, b = (np.nan_to_num(x, nan=7.0) for x in (page, a, b))
        combine = np.minimum
    else:
        combine = np.logical_or
    da, db = mmsb.accumulate_delta(jnp.asarray(a), semiring), mmsb.accumulate_delta(jnp.asarray(b), semiring)
    want = combine(combine(page, a), b)
    p = jnp.asarray(page)
    np.testing.assert_array_equal(np.asarray(mmsb.apply_delta(mmsb.apply_delta(p, da), db)), want)
    merged = mmsb.merge_deltas(da, db)
    assert isinstance(merged, mmsb.AccumulateDelta)
    np.testing.assert_array_equal(np.asarray(mmsb.apply_delta(p, merged)), want)


def test_accumulate_real_increments():
    d = mmsb.accumulate_delta(jnp.array([1.0, -2.0, 0.5], jnp.float32), "real")
    got = mmsb.apply_delta(jnp.array([1.0, 1.0, 1.0], jnp.float32), d)
    np.testing.assert_array_equal(np.asarray(got), np.array([2.0, -1.0, 1.5], np.float32))


@pytest.mark.parametrize(
    "pair",
    ["dense-acc", "acc-sparse", "acc-acc-other-semiring"],
)
def test_merge_overwrite_with_accumulate_is_refused(pair):
    dense = mmsb.dense_delta(jnp.ones(4, bool), jnp.ones(4, jnp.float32))
    sparse = mmsb.sparse_delta([1], jnp.array([2.0], jnp.float32), 4)
    acc_t = mmsb.accumulate_delta(jnp.ones(4, jnp.float32), "tropical")
    acc_r = mmsb.accumulate_delta(jnp.ones(4, jnp.float32), "real")
    d1, d2 = {"dense-acc": (dense, acc_t), "acc-sparse": (acc_t, sparse), "acc-acc-other-semiring": (acc_t, acc_r)}[pair]
    with pytest.raises(InvalidDeltaError, match="cannot merge"):
        mmsb.merge_deltas(d1, d2)


@pytest.mark.parametrize("what", ["shape", "dtype"])
def test_merge_mismatched_deltas_raise(what):
    d1 = mmsb.dense_delta(jnp.ones(4, bool), jnp.ones(4, jnp.float32))
    if what == "shape":
        d2 = mmsb.dense_delta(jnp.ones(5, bool), jnp.ones(5, jnp.float32))
        needle = "(5,)"
    else:
        d2 = mmsb.dense_delta(jnp.ones(4, bool), jnp.ones(4, jnp.int32))
        needle = "int32"
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.merge_deltas(d1, d2)
    assert needle in str(ei.value)


# --------------------------------------------------------------------------- constructor errors
def test_dense_delta_non_bool_mask():
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.dense_delta(jnp.ones(4, jnp.int32), jnp.ones(4, jnp.float32))
    assert "int32" in str(ei.value) and "mask" in str(ei.value)


def test_dense_delta_shape_mismatch():
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.dense_delta(jnp.ones((2, 3), bool), jnp.ones(6, jnp.float32))
    assert "(2, 3)" in str(ei.value) and "(6,)" in str(ei.value)


@pytest.mark.parametrize("bad", [6, 100, -1, -7])
@pytest.mark.parametrize("shape", [6, (2, 3)], ids=str)
def test_sparse_delta_index_out_of_range(bad, shape):
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.sparse_delta([0, bad, 1], jnp.zeros(3, jnp.float32), shape)
    assert str(bad) in str(ei.value)


@pytest.mark.parametrize("indices", [[2**31 + 5], jnp.array([3], jnp.int32)], ids=["concrete", "array"])
def test_sparse_delta_refuses_pages_past_int32_indices(indices):
    """Flat indices are int32: an index >= 2**31 would wrap, so such pages are refused."""
    with pytest.raises(InvalidDeltaError, match=r"at most 2147483648 elements .* shape \(4294967296,\)"):
        mmsb.sparse_delta(indices, jnp.ones(1, jnp.uint8), shape=2**32)
    assert mmsb.sparse_delta([2**31 - 1], jnp.ones(1, jnp.uint8), shape=2**31).indices.tolist() == [2**31 - 1]


@pytest.mark.parametrize(
    "indices, needle",
    [([0.0, 1.5], "float"), (np.array([True, False]), "bool"), (np.array(["a", "b"]), "<U1")],
    ids=["float", "bool", "str"],
)
def test_sparse_delta_non_integer_indices(indices, needle):
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.sparse_delta(indices, jnp.zeros(2, jnp.float32), 4)
    assert needle in str(ei.value)


def test_sparse_delta_indices_not_1d():
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.sparse_delta(np.zeros((2, 2), np.int32), jnp.zeros(4, jnp.float32), 4)
    assert "(2, 2)" in str(ei.value)


@pytest.mark.parametrize("n_values", [0, 2, 4])
def test_sparse_delta_values_length_mismatch(n_values):
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.sparse_delta([0, 1, 2], jnp.zeros(n_values, jnp.float32), 4)
    assert f"({n_values},)" in str(ei.value) and "(3,)" in str(ei.value)


def test_sparse_delta_empty_is_a_noop():
    d = mmsb.sparse_delta([], jnp.zeros(0, jnp.float32), 3)
    page = jnp.array([1.0, 2.0, 3.0], jnp.float32)
    assert_bits_equal(mmsb.apply_delta(page, d), np.asarray(page))


@pytest.mark.parametrize("kind", ["dense", "sparse", "accumulate"])
def test_apply_delta_wrong_shape(kind):
    d = {
        "dense": lambda: mmsb.dense_delta(jnp.ones(5, bool), jnp.ones(5, jnp.float32)),
        "sparse": lambda: mmsb.sparse_delta([1], jnp.ones(1, jnp.float32), 5),
        "accumulate": lambda: mmsb.accumulate_delta(jnp.ones(5, jnp.float32)),
    }[kind]()
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.apply_delta(jnp.zeros((2, 3), jnp.float32), d)
    assert "(5,)" in str(ei.value) and "(2, 3)" in str(ei.value)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("page_dtype", [np.int32, np.uint8, np.bool_], ids=lambda d: _dt(d).name)
def test_apply_delta_wrong_dtype(kind, page_dtype):
    d = {
        "dense": lambda: mmsb.dense_delta(jnp.ones(4, bool), jnp.ones(4, jnp.float32)),
        "sparse": lambda: mmsb.sparse_delta([1], jnp.ones(1, jnp.float32), 4),
    }[kind]()
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.apply_delta(jnp.zeros(4, page_dtype), d)
    assert "float32" in str(ei.value) and _dt(page_dtype).name in str(ei.value)


def test_accumulate_delta_rejects_wrong_carrier():
    with pytest.raises(InvalidDeltaError) as ei:  # tropical takes int32 pages now (issue #12); log does not
        mmsb.accumulate_delta(jnp.ones(3, jnp.int32), "log")
    assert "int32" in str(ei.value)
    d = mmsb.accumulate_delta(jnp.ones(3, jnp.bool_), "boolean")
    with pytest.raises(InvalidDeltaError):
        mmsb.apply_delta(jnp.zeros(3, jnp.float32), d)


def test_apply_delta_rejects_non_delta():
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.apply_delta(jnp.zeros(3, jnp.float32), {"mask": 1})
    assert "dict" in str(ei.value)


# --------------------------------------------------------------------------- diff / bit_equal
def _f32(bits):
    return np.array(bits, np.uint32).view(np.float32)


def test_bit_equal_nan_payloads_and_signed_zero():
    a = np.concatenate([_f32([0x7FC00001, 0x7FC00001, 0xFFC00000]), np.array([-0.0, 0.0, 1.0], np.float32)])
    b = np.concatenate([_f32([0x7FC00001, 0x7FC00002, 0xFFC00000]), np.array([0.0, 0.0, 1.0], np.float32)])
    got = np.asarray(bit_equal(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_array_equal(got, [True, False, True, False, True, True])


def test_diff_delta_nan_and_signed_zero():
    old = np.concatenate([_f32([0x7FC00001, 0x7FC00001]), np.array([-0.0, 0.0, 2.0], np.float32)])
    new = np.concatenate([_f32([0x7FC00001, 0x7FC00002]), np.array([0.0, -0.0, 2.0], np.float32)])
    d = mmsb.diff_delta(jnp.asarray(old), jnp.asarray(new))
    np.testing.assert_array_equal(np.asarray(d.mask), [False, True, True, True, False])
    assert_bits_equal(mmsb.apply_delta(jnp.asarray(old), d), new)


@params_dtype
@params_dtype_shape
@given(seed=st.integers(0, 2**32 - 1))
def test_diff_delta_roundtrip(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    old = rand_array(rng, shape, dtype)
    new = np.where(rng.random(shape) < 0.5, old, rand_array(rng, shape, dtype))
    d = mmsb.diff_delta(jnp.asarray(old), jnp.asarray(new))
    np.testing.assert_array_equal(np.asarray(d.mask), as_bits(old) != as_bits(new))
    assert_bits_equal(mmsb.apply_delta(jnp.asarray(old), d), new)
    d_jit = jax.jit(mmsb.diff_delta)(jnp.asarray(old), jnp.asarray(new))
    np.testing.assert_array_equal(np.asarray(d_jit.mask), np.asarray(d.mask))


@pytest.mark.parametrize(
    "old, new, needles",
    [
        (np.zeros(4, np.int32), np.zeros(5, np.int32), ("(4,)", "(5,)")),
        (np.zeros((2, 2), np.int32), np.zeros(4, np.int32), ("(2, 2)", "(4,)")),
        (np.zeros(4, np.int32), np.zeros(4, np.uint8), ("int32", "uint8")),
        (np.zeros(4, np.int32), np.zeros(4, np.float32), ("int32", "float32")),
    ],
    ids=["shape", "rank", "itemsize", "dtype"],
)
def test_diff_delta_mismatched_old_and_new(old, new, needles):
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.diff_delta(jnp.asarray(old), jnp.asarray(new))
    for needle in needles:
        assert needle in str(ei.value)


@pytest.mark.parametrize(
    "shape, needle",
    [((2.5,), "2.5"), (True, "True"), ((True, 2), "True"), ("3", "'3'"), ((-1,), "-1"), (2.0, "2.0")],
    ids=["float-dim", "bool", "bool-dim", "str", "negative", "float"],
)
def test_sparse_delta_bad_shape(shape, needle):
    with pytest.raises(InvalidDeltaError) as ei:
        mmsb.sparse_delta([0], jnp.array([1.0], jnp.float32), shape)
    assert needle in str(ei.value)
