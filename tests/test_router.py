"""The delta router: batches equal one-by-one routing, last writer wins, pure route_pool/route_sparse."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_bits_equal, rand_array, writes_nothing
from hypothesis import example, given
from hypothesis import strategies as st

import mmsb_jax as mmsb
from mmsb_jax import InvalidDeltaError, PageNotFoundError
from mmsb_jax.deltas._router import last_writers, sparse_rows_winners

# --------------------------------------------------------------------------- helpers






def snapshot(state):
    return mmsb.state_digest(state), state.epoch, state.num_pages


def check_rejected(state, fn, error, *needles):
    before = snapshot(state)
    with pytest.raises(error) as ei:
        fn()
    msg = str(ei.value)
    for needle in needles:  # a number must appear as itself ("1" is not found in "17")
        pre = r"(?<![\w.-])" if needle[0].isdigit() or needle[0] == "-" else ""
        post = r"(?![\w.])" if needle[-1].isdigit() else ""
        assert re.search(pre + re.escape(needle) + post, msg), (needle, msg)
    assert snapshot(state) == before
    return msg


def make_state(specs):
    """A state with one page per (shape, dtype) in ``specs`` (ids 0, 1, ...), with random content."""
    s = mmsb.mmsb_start()
    rng = np.random.default_rng(1)
    for shape, dtype in specs:
        p = mmsb.create_page(s, shape=shape, dtype=dtype)
        mmsb.update_page(s, p.id, rand_array(rng, shape, dtype))
    return s


def contents(state, ids):
    return {i: np.array(mmsb.query_page(state, i), copy=True) for i in ids}


def random_delta(rng, kind, shape, dtype, k):
    n = int(np.prod(shape))
    if kind == "dense":
        return mmsb.dense_delta(jnp.asarray(rng.random(shape) < 0.5), jnp.asarray(rand_array(rng, shape, dtype)))
    if kind == "sparse":
        hi = max(1, n // 2) if rng.random() < 0.5 else n  # often repeated targets
        return mmsb.sparse_delta(rng.integers(0, hi, size=k).astype(np.int32), jnp.asarray(rand_array(rng, (k,), dtype)), shape)
    sr = "real" if rng.random() < 0.5 else "tropical"
    payload = (rng.standard_normal(shape) * 3).astype(dtype)
    return mmsb.accumulate_delta(jnp.asarray(payload), sr)


# Page sets: (shape, dtype) per page. One pool; several pools of one dtype; int pages.
PAGE_SETS = {
    "one-pool": [((6,), np.float32)] * 3,
    "pools-float": [((6,), np.float32), ((2, 3), np.float32), ((6,), np.float32), ((4,), np.float32)],
    "pools-int": [((5,), np.int32), ((2, 2), np.int32), ((5,), np.int32)],
    "bool": [((3,), np.bool_), ((3,), np.bool_)],
}


# --------------------------------------------------------------------------- batch == one by one
@pytest.mark.parametrize("page_set", list(PAGE_SETS), ids=str)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 12),
    mode=st.sampled_from(["all-sparse", "mixed", "all-dense"]),
)
def test_batch_route_deltas_equals_one_by_one(page_set, seed, n, mode):
    specs = PAGE_SETS[page_set]
    rng = np.random.default_rng(seed)
    ids = list(range(len(specs)))
    # a skewed choice: page 0 repeats many times
    pids = [0 if rng.random() < 0.5 else int(rng.integers(0, len(ids))) for _ in range(n)]
    kinds_ok = ["dense", "sparse"] + (["accumulate"] if np.dtype(specs[0][1]) == np.float32 else [])
    entries = []
    for pid in pids:
        kind = {"all-sparse": "sparse", "all-dense": "dense"}.get(mode) or kinds_ok[rng.integers(len(kinds_ok))]
        shape, dtype = specs[pid]
        entries.append((pid, random_delta(rng, kind, shape, dtype, k=int(rng.choice([1, 3])))))
    one, batch = make_state(specs), make_state(specs)
    try:
        for pid, d in entries:
            mmsb.route_delta(one, pid, d)
        e0 = batch.epoch
        # deltas that write nothing (an all-false mask) take no epoch, here as one by one
        writing = {pid for pid, d in entries if not writes_nothing(d)}
        e = mmsb.batch_route_deltas(batch, entries)
        assert (e, batch.epoch) == ((e0 + 1, e0 + 1) if writing else (None, e0))
        want, got = contents(one, ids), contents(batch, ids)
        for i in ids:
            assert_bits_equal(got[i], want[i], f"page {i}")
        for i in ids:
            assert batch.page_epoch(i) == (e0 + 1 if i in writing else one.page_epoch(i))
    finally:
        mmsb.mmsb_stop(one)
        mmsb.mmsb_stop(batch)


def test_batch_many_repeats_of_one_page():
    s = make_state([((8,), np.int32)])
    try:
        entries = [(0, mmsb.sparse_delta([i % 8, (3 * i) % 8], jnp.array([i, -i], jnp.int32), 8)) for i in range(50)]
        want = np.asarray(mmsb.query_page(s, 0)).copy()
        for i in range(50):
            want[i % 8] = i
            want[(3 * i) % 8] = -i
        mmsb.batch_route_deltas(s, entries)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, 0)), want)
    finally:
        mmsb.mmsb_stop(s)


@pytest.mark.parametrize(
    "dtypes",
    [(np.int32, np.float32), (np.float32, np.int32), (np.uint8, np.int32), (np.int32, np.uint8, np.bool_)],
    ids=lambda ds: "+".join(np.dtype(d).name for d in ds),
)
def test_all_sparse_batch_over_pages_of_different_dtypes(dtypes):
    """Each value lands exactly, whatever the dtypes of the other pages in the batch."""
    specs = [((4,), d) for d in dtypes]
    s = mmsb.mmsb_start()
    try:
        for shape, d in specs:
            mmsb.create_page(s, shape=shape, dtype=d)
        special = {
            np.dtype(np.int32): np.array([16777217, -(2**31), 2**31 - 1], np.int32),
            np.dtype(np.float32): np.array([0.1, -0.0, 3.0e38], np.float32),
            np.dtype(np.uint8): np.array([255, 1, 7], np.uint8),
            np.dtype(np.bool_): np.array([True, False, True]),
        }
        entries, want = [], {}
        for pid, (shape, d) in enumerate(specs):
            vals = special[np.dtype(d)]
            entries.append((pid, mmsb.sparse_delta([0, 1, 3], jnp.asarray(vals), shape)))
            w = np.zeros(shape, d)
            w[[0, 1, 3]] = vals
            want[pid] = w
        mmsb.batch_route_deltas(s, entries)
        for pid, w in want.items():
            assert_bits_equal(mmsb.query_page(s, pid), w, f"page {pid} ({np.dtype(specs[pid][1])})")
    finally:
        mmsb.mmsb_stop(s)


def test_batch_empty_and_empty_sparse_rows():
    s = make_state([((4,), np.float32)] * 2)
    try:
        before = snapshot(s)
        assert mmsb.batch_route_deltas(s, []) is None
        assert snapshot(s) == before
        want = contents(s, [0, 1])
        d_empty = mmsb.sparse_delta([], jnp.zeros(0, jnp.float32), 4)
        d = mmsb.sparse_delta([2], jnp.array([5.0], jnp.float32), 4)
        e = mmsb.batch_route_deltas(s, [(0, d_empty), (1, d), (0, d_empty)])
        assert e == before[1] + 1 == s.epoch
        want[1][2] = 5.0
        for i, w in want.items():
            assert_bits_equal(mmsb.query_page(s, i), w)
    finally:
        mmsb.mmsb_stop(s)


# --------------------------------------------------------------------------- route_sparse_batch
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.bool_], ids=lambda d: np.dtype(d).name)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8), k=st.sampled_from([1, 4]))
def test_route_sparse_batch_matches_numpy_model(dtype, seed, n, k):
    rng = np.random.default_rng(seed)
    specs = [((6,), dtype), ((2, 3), dtype), ((6,), dtype), ((9,), dtype)]
    s = make_state(specs)
    try:
        model = contents(s, range(len(specs)))
        pids = rng.integers(0, 2 if rng.random() < 0.5 else len(specs), size=n)
        ind = np.stack([rng.integers(0, int(np.prod(specs[p][0])) // (1 if rng.random() < 0.5 else 3), size=k) for p in pids])
        vals = rand_array(rng, (n, k), dtype)
        for p, row_i, row_v in zip(pids.tolist(), ind, vals):
            flat = model[p].reshape(-1)
            for i, v in zip(row_i.tolist(), row_v):
                flat[i] = v  # batch order: the last writer wins
        e0 = s.epoch
        assert mmsb.route_sparse_batch(s, pids, ind, vals) == e0 + 1 == s.epoch
        touched = set(pids.tolist())
        for p, w in model.items():
            assert_bits_equal(mmsb.query_page(s, p), w, f"page {p}")
            assert (s.page_epoch(p) == e0 + 1) == (p in touched)
    finally:
        mmsb.mmsb_stop(s)


def test_route_sparse_batch_last_writer_wins_across_rows():
    s = make_state([((4,), np.int32)] * 3)
    try:
        pids = np.array([1, 0, 1, 1])
        ind = np.array([[0, 0], [3, 3], [2, 0], [1, 2]])
        vals = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.int32)
        want = contents(s, range(3))
        want[1][[0, 2, 1]] = [6, 8, 7]
        want[0][3] = 4
        mmsb.route_sparse_batch(s, pids, ind, vals)
        for p, w in want.items():
            np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, p)), w)
        before = snapshot(s)
        assert mmsb.route_sparse_batch(s, np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int32)) is None
        assert snapshot(s) == before
    finally:
        mmsb.mmsb_stop(s)


# --------------------------------------------------------------------------- batches with bad entries
@pytest.fixture
def routed():
    """ids 0-2: int32 (4,) pages (2 deleted), id 3: int32 (2, 3), id 4: float32 (6,)."""
    s = mmsb.mmsb_start()
    try:
        ids = mmsb.create_pages(s, 3, size=4, dtype=jnp.int32)
        mmsb.create_page(s, shape=(2, 3), dtype=jnp.int32)
        mmsb.create_page(s, size=6, dtype=jnp.float32)
        for i in ids.tolist():
            mmsb.update_page(s, i, np.arange(4, dtype=np.int32) + 10 * i)
        mmsb.delete_page(s, 2)
        yield s
    finally:
        mmsb.mmsb_stop(s)


def _sp(idx, vals, shape=4, dtype=jnp.int32):
    return mmsb.sparse_delta(idx, jnp.asarray(vals, dtype), shape)


BAD_ENTRY = {
    "unknown-id": (lambda: (999, _sp([0], [1])), PageNotFoundError, ("999",)),
    "deleted-id": (lambda: (2, _sp([0], [1])), PageNotFoundError, ("2",)),
    "negative-id": (lambda: (-5, _sp([0], [1])), PageNotFoundError, ("-5",)),
    "str-id": (lambda: ("x", _sp([0], [1])), PageNotFoundError, ("'x'",)),
    "wrong-dtype": (lambda: (4, _sp([0], [1], 6, jnp.int32)), InvalidDeltaError, ("4", "int32", "float32")),
    "wrong-shape": (lambda: (3, _sp([0], [1], 4)), InvalidDeltaError, ("3", "(4,)", "(2, 3)")),
    "out-of-range": (
        lambda: (1, mmsb.SparseDelta(jnp.array([0, 17], jnp.int32), jnp.array([1, 2], jnp.int32), (4,))),
        InvalidDeltaError,
        ("1", "17"),
    ),
    "not-a-delta": (lambda: (1, np.zeros(4, np.int32)), InvalidDeltaError, ("1", "ndarray")),
    "not-a-pair": (lambda: (1,), InvalidDeltaError, ()),
}


@pytest.mark.parametrize("case", list(BAD_ENTRY), ids=str)
@pytest.mark.parametrize("valid_kind", ["sparse", "mixed"])
def test_batch_with_invalid_entry_3_applies_nothing(routed, case, valid_kind):
    make, error, needles = BAD_ENTRY[case]
    valid = [
        (0, _sp([0, 1], [7, 8])),
        (1, _sp([2], [9])),
        (0, _sp([3], [5]) if valid_kind == "sparse" else mmsb.dense_delta(jnp.ones(4, bool), jnp.full(4, 3, jnp.int32))),
    ]
    before_pages = contents(routed, [0, 1, 3, 4])
    msg = check_rejected(routed, lambda: mmsb.batch_route_deltas(routed, valid + [make()] + valid), error, "3", *needles)
    assert "entry 3" in msg, msg
    for i, w in before_pages.items():
        assert_bits_equal(mmsb.query_page(routed, i), w)


BAD_SPARSE_BATCH = {
    "unknown-id": (lambda: (np.array([0, 1, 999]), np.zeros((3, 2), np.int64), np.ones((3, 2), np.int32)), PageNotFoundError, ("999", "2")),
    "deleted-id": (lambda: (np.array([0, 2, 1]), np.zeros((3, 2), np.int64), np.ones((3, 2), np.int32)), PageNotFoundError, ("2", "1")),
    "negative-id": (lambda: (np.array([-3, 0]), np.zeros((2, 2), np.int64), np.ones((2, 2), np.int32)), PageNotFoundError, ("-3", "0")),
    "out-of-range": (lambda: (np.array([0, 1]), np.array([[0, 1], [17, 2]]), np.ones((2, 2), np.int32)), InvalidDeltaError, ("17", "1")),
    "negative-index": (lambda: (np.array([0, 1]), np.array([[0, -1], [3, 2]]), np.ones((2, 2), np.int32)), InvalidDeltaError, ("-1", "0")),
    "out-of-range-2nd-pool": (
        lambda: (np.array([0, 3, 1]), np.array([[0, 1], [6, 2], [1, 1]]), np.ones((3, 2), np.int32)),
        InvalidDeltaError,
        ("6", "3"),
    ),
    "values-dtype": (lambda: (np.array([0, 1]), np.zeros((2, 2), np.int64), np.ones((2, 2), np.float32)), InvalidDeltaError, ("float32", "int32")),
    "values-shape": (lambda: (np.array([0, 1]), np.zeros((2, 2), np.int64), np.ones((2, 3), np.int32)), InvalidDeltaError, ("(2, 3)", "(2, 2)")),
    "float-indices": (lambda: (np.array([0, 1]), np.zeros((2, 2), np.float32), np.ones((2, 2), np.int32)), InvalidDeltaError, ("float32",)),
    "rows-mismatch": (lambda: (np.array([0, 1]), np.zeros((3, 2), np.int64), np.ones((3, 2), np.int32)), InvalidDeltaError, ("(3, 2)", "n=2")),
    "float-ids": (lambda: (np.array([0.0, 1.0]), np.zeros((2, 2), np.int64), np.ones((2, 2), np.int32)), (InvalidDeltaError, PageNotFoundError), ("float64",)),
}


@pytest.mark.parametrize("case", list(BAD_SPARSE_BATCH), ids=str)
def test_route_sparse_batch_bad_input_applies_nothing(routed, case):
    make, error, needles = BAD_SPARSE_BATCH[case]
    before_pages = contents(routed, [0, 1, 3, 4])
    check_rejected(routed, lambda: mmsb.route_sparse_batch(routed, *make()), error, *needles)
    for i, w in before_pages.items():
        assert_bits_equal(mmsb.query_page(routed, i), w)


# --------------------------------------------------------------------------- pure router
def _stack(ds):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *ds)


CAP, N_DELTAS, K = 4, 6, 3


def _np_sequential(pool, slots, kind, parts):
    out = np.array(pool, copy=True)
    for i, slot in enumerate(slots.tolist()):
        page = out[slot]
        if kind == "dense":
            m = parts[0][i]
            page[m] = parts[1][i][m]
        elif kind == "sparse":
            flat = page.reshape(-1)
            for j, v in zip(parts[0][i].tolist(), parts[1][i]):
                if 0 <= j < flat.size:
                    flat[j] = v
        else:
            page[...] = np.minimum(page, parts[0][i])
    return out


def _random_stacked(rng, kind, shape, dtype, oob=False):
    n = int(np.prod(shape))
    if kind == "dense":
        mask = rng.random((N_DELTAS,) + shape) < 0.5
        payload = rand_array(rng, (N_DELTAS,) + shape, dtype)
        return mmsb.DenseDelta(jnp.asarray(mask), jnp.asarray(payload)), (mask, payload)
    if kind == "sparse":
        lo, hi = (-2, n + 2) if oob else (0, n)
        idx = rng.integers(lo, hi, size=(N_DELTAS, K)).astype(np.int32)
        vals = rand_array(rng, (N_DELTAS, K), dtype)
        return mmsb.SparseDelta(jnp.asarray(idx), jnp.asarray(vals), shape), (idx, vals)
    payload = np.nan_to_num(rand_array(rng, (N_DELTAS,) + shape, dtype), nan=1.0)
    return mmsb.AccumulateDelta(jnp.asarray(payload), mmsb.semirings.TROPICAL), (payload,)


_route_pool_jit = jax.jit(mmsb.route_pool)


@jax.jit
def _apply_one_by_one(pool, slots, stacked):
    """apply_delta on each delta in turn (a Python loop, unrolled)."""
    for i in range(N_DELTAS):
        d = jax.tree.map(lambda x, i=i: x[i], stacked)
        pool = pool.at[slots[i]].set(mmsb.apply_delta(pool[slots[i]], d))
    return pool
_route_sparse_jit = jax.jit(mmsb.route_sparse)


@pytest.mark.parametrize("kind", ["dense", "sparse", "accumulate"])
@pytest.mark.parametrize("shape", [(6,), (2, 3)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.int32], ids=lambda d: np.dtype(d).name)
@given(seed=st.integers(0, 2**32 - 1))
def test_route_pool_under_jit_equals_sequential(kind, shape, dtype, seed):
    if kind == "accumulate" and dtype != np.float32:
        return  # the tropical semiring lives on floats
    rng = np.random.default_rng(seed)
    pool = rand_array(rng, (CAP,) + shape, dtype)
    slots = rng.integers(0, 2 if rng.random() < 0.5 else CAP, size=N_DELTAS).astype(np.int32)
    stacked, parts = _random_stacked(rng, kind, shape, dtype)
    got = _route_pool_jit(jnp.asarray(pool), jnp.asarray(slots), stacked)
    assert_bits_equal(got, _np_sequential(pool, slots, kind, parts))
    assert_bits_equal(got, _apply_one_by_one(jnp.asarray(pool), jnp.asarray(slots), stacked))


@pytest.mark.parametrize("shape", [(6,), (2, 3)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.bool_], ids=lambda d: np.dtype(d).name)
@given(seed=st.integers(0, 2**32 - 1), oob=st.booleans())
def test_route_sparse_under_jit_equals_route_pool(shape, dtype, seed, oob):
    rng = np.random.default_rng(seed)
    pool = rand_array(rng, (CAP,) + shape, dtype)
    slots = rng.integers(0, 2 if rng.random() < 0.5 else CAP, size=N_DELTAS).astype(np.int32)
    stacked, (idx, vals) = _random_stacked(rng, "sparse", shape, dtype, oob=oob)
    if rng.random() < 0.5:  # force duplicates within and across rows
        idx[:, -1] = idx[:, 0]
        slots[-1] = slots[0]
        stacked = mmsb.SparseDelta(jnp.asarray(idx), jnp.asarray(vals), shape)
    got = _route_sparse_jit(jnp.asarray(pool), jnp.asarray(slots), jnp.asarray(idx), jnp.asarray(vals))
    want = _route_pool_jit(jnp.asarray(pool), jnp.asarray(slots), stacked)
    assert_bits_equal(got, want)
    assert_bits_equal(got, _np_sequential(pool, slots, "sparse", (idx, vals)))


def test_route_pool_rejects_non_delta():
    with pytest.raises(InvalidDeltaError):
        mmsb.route_pool(jnp.zeros((2, 3)), jnp.array([0]), {"indices": jnp.zeros((1, 1))})


# --------------------------------------------------------------------------- host-side resolution
def _brute_keep(targets):
    t = list(targets)
    return np.array([all(t[j] != t[i] for j in range(i + 1, len(t))) for i in range(len(t))], bool)


@example(targets=[])
@example(targets=[5])
@example(targets=[2**61, 3, 2**61])  # beyond the packed-key range: the lexsort path
@given(targets=st.lists(st.integers(0, 20) | st.integers(0, 2**62), max_size=40))
def test_last_writers_brute_force(targets):
    t = np.array(targets, np.int64)
    got = last_writers(t)
    want = _brute_keep(targets)
    if got is None:
        assert want.all()
    else:
        pos, win = got
        np.testing.assert_array_equal(np.sort(pos), np.flatnonzero(want))
        np.testing.assert_array_equal(win, t[pos])
        assert not want.all()
        assert (np.diff(win) > 0).all()  # winners come in target order


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 8),
    k=st.integers(0, 5) | st.just(18),  # 18: past the column-pair check, the row-sort one
    page_elems=st.sampled_from([1, 4, 7, 40]),
)
def test_sparse_rows_winners_brute_force(seed, n, k, page_elems):
    rng = np.random.default_rng(seed)
    capacity = 6
    slots = rng.integers(0, 2 if rng.random() < 0.5 else capacity, size=n).astype(np.int64)
    indices = rng.integers(0, page_elems, size=(n, k)).astype(np.int32)
    got = sparse_rows_winners(slots, indices, page_elems, capacity)
    targets = (slots[:, None] * page_elems + indices).reshape(-1).tolist()
    want = _brute_keep(targets)
    if got is None:
        assert want.all()
    else:
        pos, tgt = got
        np.testing.assert_array_equal(np.sort(pos), np.flatnonzero(want))
        np.testing.assert_array_equal(tgt, np.array(targets, np.int64)[pos])


@pytest.mark.parametrize("permute", [False, True], ids=["whole-page-rows", "permuted-rows"])
def test_whole_page_rows_last_writer_wins(permute):
    """Rows that rewrite whole pages take a row-write path; the result is the same last-writer
    model as element scatters (permuted indices take the element path)."""
    rng = np.random.default_rng(7)
    st = mmsb.mmsb_start()
    ids = mmsb.create_pages(st, 6, size=8, dtype=np.int32)
    rows = rng.integers(0, 6, 30)
    ind = np.tile(np.arange(8, dtype=np.int32), (30, 1))
    if permute:
        ind = np.stack([rng.permutation(8) for _ in range(30)]).astype(np.int32)
    vals = rng.integers(-1000, 1000, (30, 8)).astype(np.int32)
    epoch = mmsb.route_sparse_batch(st, ids[rows], ind, vals)
    model = np.zeros((6, 8), np.int32)
    for r in range(30):
        model[rows[r], ind[r]] = vals[r]
    got = np.stack([np.asarray(mmsb.query_page(st, int(i))) for i in ids])
    np.testing.assert_array_equal(got, model)
    for p in range(6):
        assert st.page_epoch(int(ids[p])) == (epoch if p in rows else 1)
    snap = mmsb.replay_to_epoch(st, epoch)
    np.testing.assert_array_equal(np.stack([np.asarray(mmsb.query_page(snap, int(i))) for i in ids]), model)
    mmsb.mmsb_stop(st)


@pytest.mark.slow  # a 2 GiB arena, read back whole: ~40 s and ~10 GB here (the pure path below runs always)
def test_sparse_batch_into_a_pool_past_int32_flat_targets(tmp_path):
    """A pool of >= 2**31 elements cannot take flat int32 targets: its rows go in rounds
    instead, with the same last-writer result, one epoch, and an exact replay."""
    path = tmp_path / "big"
    s = mmsb.mmsb_start(path, fsync="never")
    big = mmsb.create_pages(s, 2, size=2**30, dtype=jnp.uint8).tolist()  # the arena: 2**31 elements
    small = mmsb.create_page(s, size=4, dtype=jnp.uint8).id
    e = mmsb.route_sparse_batch(s, [big[1], small, big[1], big[0]],
                                np.array([[5, 2**30 - 1], [0, 1], [5, 7], [0, 0]]),
                                np.array([[1, 2], [3, 4], [9, 8], [6, 7]], np.uint8))
    assert e == 3 and s.epoch == 3
    want = {big[0]: {0: 7}, big[1]: {5: 9, 7: 8, 2**30 - 1: 2}}  # later rows win
    for pid, vals in want.items():
        page = np.asarray(mmsb.query_page(s, pid))
        assert {int(i): int(page[i]) for i in np.flatnonzero(page)} == vals
    assert np.asarray(mmsb.query_page(s, small)).tolist() == [3, 4, 0, 0]
    digest = mmsb.state_digest(s)
    mmsb.mmsb_stop(s)
    s = mmsb.mmsb_open(path)
    try:
        assert (s.epoch, mmsb.state_digest(s)) == (3, digest)
    finally:
        s.close()


def test_bad_kernel_switch_takes_no_epoch(monkeypatch):
    s = mmsb.mmsb_start(fsync="never")
    try:
        p = mmsb.create_page(s, size=4, dtype=jnp.uint8).id
        monkeypatch.setenv("MMSB_KERNELS", "bogus")
        for call in (lambda: mmsb.route_sparse_batch(s, [p], [[0]], np.ones((1, 1), np.uint8)),
                     lambda: mmsb.batch_route_deltas(s, [(p, mmsb.sparse_delta([0], jnp.ones(1, jnp.uint8), 4))])):
            with pytest.raises(ValueError, match="MMSB_KERNELS"):
                call()
            assert s.epoch == 1 and np.asarray(mmsb.query_page(s, p)).tolist() == [0, 0, 0, 0]
        monkeypatch.delenv("MMSB_KERNELS")
        assert [r.epoch for r in mmsb.query_log(s)] == [1]
        assert mmsb.route_sparse_batch(s, [p], [[0]], np.ones((1, 1), np.uint8)) == 2
    finally:
        mmsb.mmsb_stop(s)


@pytest.mark.parametrize("how", ["route_sparse_batch", "batch_route_deltas-sparse", "batch_route_deltas-mixed"])
def test_a_raising_observer_cannot_unlog_a_batch(tmp_path, how):
    """Observers run after the batch is logged and applied: one that raises leaves the
    write applied, logged and replayable."""
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    a, b = (mmsb.create_page(s, size=2, dtype=jnp.float32).id for _ in range(2))

    def boom(pid, epoch):
        raise RuntimeError("observer failed")

    s.observe(a, boom)
    s.observe(b, boom)
    call = {
        "route_sparse_batch": lambda: mmsb.route_sparse_batch(s, [a, b], [[0], [1]], np.array([[5.0], [7.0]], np.float32)),
        "batch_route_deltas-sparse": lambda: mmsb.batch_route_deltas(
            s, [(a, mmsb.sparse_delta([0], jnp.array([5.0]), 2)), (b, mmsb.sparse_delta([1], jnp.array([7.0]), 2))]),
        "batch_route_deltas-mixed": lambda: mmsb.batch_route_deltas(
            s, [(a, mmsb.sparse_delta([0], jnp.array([5.0]), 2)),
                (b, mmsb.dense_delta(jnp.array([False, True]), jnp.array([0.0, 7.0])))]),
    }[how]
    with pytest.raises(RuntimeError, match="observer failed"):
        call()
    want = (s.epoch, mmsb.state_digest(s))
    assert s.epoch == 3
    assert np.asarray(mmsb.query_page(s, a)).tolist() == [5.0, 0.0]
    assert np.asarray(mmsb.query_page(s, b)).tolist() == [0.0, 7.0]
    s.close()
    s = mmsb.mmsb_open(path)
    try:
        assert (s.epoch, mmsb.state_digest(s)) == want
    finally:
        s.close()


def test_route_sparse_on_a_pool_past_int32_flat_targets():
    pool = jnp.zeros((2, 2**30), jnp.uint8)  # 2**31 elements
    out = mmsb.route_sparse(pool, jnp.array([1, 0, 1]), jnp.array([[0, 2**30 - 1], [3, 3], [0, -1]]),
                            jnp.array([[1, 2], [3, 4], [5, 6]], jnp.uint8))
    got = {(int(r), int(i)): int(out[r, i]) for r, i in [(1, 0), (1, 2**30 - 1), (0, 3), (0, 0), (1, 1)]}
    assert got == {(1, 0): 5, (1, 2**30 - 1): 2, (0, 3): 4, (0, 0): 0, (1, 1): 0}  # later wins; -1 dropped
