"""Sparse rows in occurrence rounds (deltas/_rounds.py): the sequential last-writer result,
bit for bit, against a numpy row-by-row model; the shell takes the path for large batches."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mmsb
from mmsb_jax.deltas import _rounds
from mmsb_jax.deltas._rounds import plan_rounds, round_order, scatter_rounds, stable_argsort


def sequential(capacity, page_elems, slots, indices, values, dtype):
    """The model: rows applied one by one, entries of a row left to right."""
    pool = np.zeros((capacity, page_elems), dtype)
    for s, ind, val in zip(slots, indices, values):
        for i, v in zip(ind, val):
            pool[s, i] = v
    return pool


@given(keys=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 70), max_size=60), wide=st.booleans())
def test_stable_argsort_matches_numpy(keys, wide):
    k = np.array(keys, np.int64)
    bound = 2**32 if wide or (k.size and k.max() >= 2**16) else 2**16
    np.testing.assert_array_equal(stable_argsort(k, bound), np.argsort(k, kind="stable"))


@given(keys=st.lists(st.integers(0, 9), max_size=50))
def test_round_order_model(keys):
    k = np.array(keys, np.int64)
    order, sizes = round_order(k, 10)
    seen: dict[int, int] = {}
    rank = []
    for x in keys:  # the model: a key's r-th occurrence is in round r
        rank.append(seen.get(x, 0))
        seen[x] = rank[-1] + 1
    rank = np.array(rank, np.int64)
    assert sorted(order.tolist()) == list(range(len(keys)))
    np.testing.assert_array_equal(sizes, np.bincount(rank) if len(keys) else np.zeros(0, np.int64))
    want = sorted(range(len(keys)), key=lambda i: (rank[i], keys[i], i))  # round, then key
    assert order.tolist() == want


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    k=st.integers(1, 6) | st.just(20),  # 20: rows past the column check (row sort)
    capacity=st.sampled_from([1, 3, 17]),
    page_elems=st.sampled_from([1, 5, 64]),
    dtype=st.sampled_from([np.uint8, np.int32, np.float32, np.bool_]),
)
def test_rounds_equal_sequential(seed, n, k, capacity, page_elems, dtype):
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, capacity, n).astype(np.int64)
    indices = rng.integers(0, page_elems, (n, k)).astype(np.int32)  # repeats within rows too
    values = rng.integers(0, 200, (n, k)).astype(dtype)
    plan = plan_rounds(slots, indices, values, page_elems, capacity)
    got = scatter_rounds(jnp.zeros((capacity, page_elems), dtype), plan)
    want = sequential(capacity, page_elems, slots, indices, values, dtype)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert plan.rounds == np.bincount(slots).max()


def test_rounds_too_large_for_int32_targets_is_declined():
    """A pool whose flat targets (plus skipped entries) pass int32 gets ``None`` (the caller's
    other path), not wrapped targets."""
    slots = np.array([0, 0])
    ind = np.zeros((2, 1), np.int32)
    assert plan_rounds(slots, ind, ind, 2**20, 2**11) is None
    pool = jnp.zeros((1, 4), jnp.int32)
    assert _rounds.apply_rounds(pool, slots, ind, ind, 2**20, 2**11) is None
    assert not pool.is_deleted()  # declined before anything was applied (nothing donated)


@pytest.mark.parametrize("pipeline_from", [None, 100])
@pytest.mark.parametrize("dup_frac", [0.3, 0.9])
def test_state_batch_in_rounds_equals_model(monkeypatch, dup_frac, pipeline_from):
    """route_sparse_batch over repeated pages goes in rounds from ROUNDS_FROM entries (from
    PIPELINE_FROM rows in consecutive parts); the result and the epoch stamps equal the
    row-by-row model, and the path was taken (counted through a wrapper)."""
    calls = []
    real = _rounds.scatter_rounds

    def counting(pool, plan):
        calls.append(plan.rounds)
        return real(pool, plan)

    import mmsb_jax.shell._batch as batch_mod

    monkeypatch.setattr(_rounds, "scatter_rounds", counting)
    monkeypatch.setattr(batch_mod, "ROUNDS_FROM", 64)
    if pipeline_from is not None:
        monkeypatch.setattr(_rounds, "PIPELINE_FROM", pipeline_from)
    rng = np.random.default_rng(3)
    n_pages, n, k, pe = 40, 400, 5, 32
    st_ = mmsb.mmsb_start()
    ids = mmsb.create_pages(st_, n_pages, size=pe, dtype=np.int16)
    n_unique = max(1, int(n * (1 - dup_frac)))
    rows = rng.choice(rng.permutation(n_pages)[: min(n_pages, n_unique)], n)
    ind = rng.integers(0, pe, (n, k)).astype(np.int32)
    vals = rng.integers(-3000, 3000, (n, k)).astype(np.int16)
    epoch = mmsb.route_sparse_batch(st_, ids[rows], ind, vals)
    assert len(calls) == (1 if pipeline_from is None else _rounds.PIPELINE_PARTS), calls
    want = sequential(n_pages, pe, rows, ind, vals, np.int16)
    got = np.stack([np.asarray(mmsb.query_page(st_, int(i))) for i in ids])
    np.testing.assert_array_equal(got, want)
    touched = np.isin(np.arange(n_pages), rows)
    stamps = st_._table.epoch[ids]  # the pages' last-write epochs (what replay restores)
    assert (stamps[touched] == epoch).all() and (stamps[~touched] < epoch).all()
    mmsb.mmsb_stop(st_)


def test_replay_in_rounds_reproduces_digest(tmp_path, monkeypatch):
    """A log of many sparse batches over few pages replays (one merged run, in rounds) to the
    digest the live state had."""
    import mmsb_jax.shell._batch as batch_mod

    monkeypatch.setattr(batch_mod, "ROUNDS_FROM", 64)
    rng = np.random.default_rng(5)
    path = str(tmp_path / "s")
    st_ = mmsb.mmsb_start(path)
    ids = mmsb.create_pages(st_, 30, size=16, dtype=np.float32)
    for _ in range(12):
        rows = rng.integers(0, 30, 50)
        ind = rng.integers(0, 16, (50, 3)).astype(np.int32)
        mmsb.route_sparse_batch(st_, ids[rows], ind, rng.standard_normal((50, 3)).astype(np.float32))
    digest = mmsb.state_digest(st_)
    mmsb.mmsb_stop(st_)
    again = mmsb.mmsb_open(path)
    assert mmsb.state_digest(again) == digest
    again.close()
