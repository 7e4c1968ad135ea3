"""The jit delta ring: append under jit / lax.scan, drain into the state, log, replay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import InvalidArgumentError, InvalidDeltaError, PageNotFoundError, RingOverflowError

F32 = np.float32
K = 2


@pytest.fixture
def state(tmp_path):
    s = mmsb.mmsb_start(tmp_path / "state", fsync="never")
    yield s
    s.close()


def pages(state, n=3, size=8):
    return [int(i) for i in mmsb.create_pages(state, n, size=size, dtype=np.float32)]


def values_of(state, ids):
    return {p: np.asarray(mmsb.query_page(state, p)) for p in ids}


@jax.jit
def append(ring, pids, idx, vals):
    return mmsb.ring_append(ring, pids, idx, vals)


def test_ring_append_under_jit(state):
    ids = pages(state)
    ring = mmsb.delta_ring(8, K, jnp.float32)
    assert ring.capacity == 8 and int(ring.count) == 0
    rows = [
        (ids[0], [0, 1], [1.0, 2.0]),
        (ids[1], [3, 3], [5.0, 6.0]),  # a repeated index inside a row: the later entry wins
        (ids[0], [1, 7], [9.0, 4.0]),  # overwrites ids[0][1] written by the first row
        (ids[2], [0, 0], [3.0, 3.0]),
    ]
    for pid, idx, vals in rows:
        ring = append(ring, jnp.array([pid]), jnp.array([idx]), jnp.array([vals], jnp.float32))
    assert int(ring.count) == 4
    want = {p: np.zeros(8, F32) for p in ids}
    for pid, idx, vals in rows:
        for i, v in zip(idx, vals):
            want[pid][i] = v
    before = state.epoch
    epoch, ring = state.drain_ring(ring)
    assert epoch == before + 1 == state.epoch
    assert int(ring.count) == 0
    got = values_of(state, ids)
    for p in ids:
        np.testing.assert_array_equal(got[p], want[p])
        assert state.page_epoch(p) == epoch
    (rec,) = mmsb.query_log(state, source="jit-ring")
    assert rec.epoch == epoch and rec.kind.name == "SPARSE_BATCH"
    assert rec.page_ids.tolist() == [r[0] for r in rows]
    assert rec.indices.tolist() == [r[1] for r in rows]
    assert mmsb.query_log(state, source="user", epochs=(epoch, epoch)) == []
    snap = mmsb.replay_to_epoch(state, epoch)
    assert mmsb.state_digest(snap) == mmsb.state_digest(state)
    for p in ids:
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, p)), want[p])
    # draining an empty ring is a no-op: no epoch, nothing logged
    e2, ring = state.drain_ring(ring)
    assert e2 is None and state.epoch == epoch
    assert len(mmsb.query_log(state, source="jit-ring")) == 1


def test_ring_in_a_scan_loop_and_reopen(tmp_path):
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path, fsync="batch")
    ids = pages(state, n=2, size=4)
    a, b = ids
    steps = 6

    @jax.jit
    def loop(ring, x0):
        def body(carry, t):
            ring, x = carry
            x = x * 2.0 + 1.0
            pid = jnp.where(t % 2 == 0, a, b)
            idx = jnp.stack([t % 4, (t + 1) % 4])[None]
            ring = mmsb.ring_append(ring, pid[None], idx.astype(jnp.int32), jnp.stack([x, -x])[None])
            return (ring, x), x

        (ring, x), xs = jax.lax.scan(body, (ring, x0), jnp.arange(steps))
        return ring, xs

    ring = mmsb.delta_ring(steps, K, jnp.float32)
    ring, xs = loop(ring, jnp.float32(0.0))
    assert int(ring.count) == steps
    want = {a: np.zeros(4, F32), b: np.zeros(4, F32)}
    for t, x in enumerate(np.asarray(xs)):
        pid = a if t % 2 == 0 else b
        want[pid][t % 4] = x
        want[pid][(t + 1) % 4] = -x
    e1, ring = state.drain_ring(ring)
    for p in ids:
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, p)), want[p])
    # a second round through the same (cleared) ring: continues at position 0
    ring, xs2 = loop(ring, jnp.float32(1.0))
    for t, x in enumerate(np.asarray(xs2)):
        pid = a if t % 2 == 0 else b
        want[pid][t % 4] = x
        want[pid][(t + 1) % 4] = -x
    e2, ring = state.drain_ring(ring)
    assert e2 == e1 + 1
    for p in ids:
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, p)), want[p])
    assert [r.epoch for r in mmsb.query_log(state, source="jit-ring")] == [e1, e2]
    digest = mmsb.state_digest(state)
    mmsb.mmsb_stop(state)
    s = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(s) == digest
        for p in ids:
            np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, p)), want[p])
        snap = mmsb.replay_to_epoch(s, e1)
        assert snap.epoch == e1
    finally:
        s.close()


def test_ring_drain_propagates_to_dependents(state):
    a, b = pages(state, n=2, size=4)
    mmsb.add_dependency(state, a, b, weight=3.0)
    calls = []
    state.observe(b, lambda pid, e: calls.append((pid, e)))
    ring = mmsb.delta_ring(4, K, jnp.float32)
    ring = append(ring, jnp.array([a]), jnp.array([[0, 2]]), jnp.array([[1.0, 2.0]], jnp.float32))
    epoch, _ = state.drain_ring(ring)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, b)), np.array([3, 0, 6, 0], F32))
    assert calls == [(b, epoch)]
    snap = mmsb.replay_to_epoch(state, epoch)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, b)), np.array([3, 0, 6, 0], F32))


def _unchanged(state, ids, fn, exc):
    digest, epoch, vals = mmsb.state_digest(state), state.epoch, values_of(state, ids)
    nlog = len(mmsb.query_log(state))
    with pytest.raises(exc):
        fn()
    assert mmsb.state_digest(state) == digest and state.epoch == epoch
    after = values_of(state, ids)
    for p in ids:
        np.testing.assert_array_equal(after[p], vals[p])
    assert len(mmsb.query_log(state)) == nlog


def test_ring_overflow_changes_nothing(state):
    ids = pages(state)
    mmsb.update_page(state, ids[0], np.arange(8, dtype=F32))
    ring = mmsb.delta_ring(3, K, jnp.float32)
    for t in range(4):  # one more than the ring holds
        ring = append(ring, jnp.array([ids[t % 3]]), jnp.array([[t, t + 1]]), jnp.array([[9.0, 9.0]], jnp.float32))
    assert int(ring.count) == 4
    _unchanged(state, ids, lambda: state.drain_ring(ring), RingOverflowError)
    # appending more than the capacity at once is refused at trace time
    with pytest.raises(InvalidArgumentError):
        mmsb.ring_append(mmsb.delta_ring(2, K, jnp.float32), jnp.zeros(3, jnp.int32),
                         jnp.zeros((3, K), jnp.int32), jnp.zeros((3, K), jnp.float32))


def test_ring_bad_rows_change_nothing(state):
    ids = pages(state)
    mmsb.update_page(state, ids[1], np.ones(8, F32))
    mmsb.delete_page(state, ids[2])
    live = ids[:2]

    def ring_with(pid, idx):
        ring = mmsb.delta_ring(4, K, jnp.float32)
        ring = append(ring, jnp.array([ids[0]]), jnp.array([[0, 1]]), jnp.array([[7.0, 7.0]], jnp.float32))
        return append(ring, jnp.array([pid]), jnp.array([idx]), jnp.array([[8.0, 8.0]], jnp.float32))

    for bad_pid in (99, ids[2], -1):  # unknown, deleted, negative
        _unchanged(state, live, lambda: state.drain_ring(ring_with(bad_pid, [0, 1])), PageNotFoundError)
    _unchanged(state, live, lambda: state.drain_ring(ring_with(ids[1], [0, 8])), InvalidDeltaError)
    _unchanged(state, live, lambda: state.drain_ring(ring_with(ids[1], [-1, 0])), InvalidDeltaError)
    # a ring of another dtype than the page
    iring = append(mmsb.delta_ring(2, K, jnp.int32), jnp.array([ids[0]]), jnp.array([[0, 1]]),
                   jnp.array([[1, 1]], jnp.int32))
    _unchanged(state, live, lambda: state.drain_ring(iring), InvalidDeltaError)
    # nothing was logged under the ring's source, and a good drain still works afterwards
    assert mmsb.query_log(state, source="jit-ring") == []
    epoch, _ = state.drain_ring(ring_with(ids[1], [2, 3]))
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, ids[1])), np.array([1, 1, 8, 8, 1, 1, 1, 1], F32))
    assert [r.epoch for r in mmsb.query_log(state, source="jit-ring")] == [epoch]
    # later user writes are tagged "user" again
    e = mmsb.update_page(state, ids[0], np.zeros(8, F32))
    assert mmsb.query_log(state, epochs=(e, e))[0].source == "user"


def test_ring_append_shape_and_dtype_errors():
    ring = mmsb.delta_ring(4, K, jnp.float32)
    with pytest.raises(InvalidArgumentError):
        mmsb.ring_append(ring, jnp.zeros(1, jnp.int32), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3), jnp.float32))
    with pytest.raises(InvalidArgumentError):
        mmsb.ring_append(ring, jnp.zeros(1, jnp.int32), jnp.zeros((1, K), jnp.int32), jnp.zeros((1, K), jnp.int32))
    with pytest.raises(InvalidArgumentError):
        mmsb.delta_ring(0, K, jnp.float32)


def test_ring_rows_for_pages_of_several_shapes(tmp_path):
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path, fsync="never")
    small = [int(i) for i in mmsb.create_pages(state, 2, size=3, dtype=np.float32)]
    big = mmsb.create_page(state, shape=(2, 4), dtype=jnp.float32).id
    mmsb.add_dependency(state, small[0], small[1], weight=-1.0)
    ring = mmsb.delta_ring(8, K, jnp.float32)
    ring = append(ring, jnp.array([big, small[0], big]), jnp.array([[7, 0], [2, 1], [0, 5]]),
                  jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], jnp.float32))
    epoch, _ = state.drain_ring(ring)
    want_big = np.zeros((2, 4), F32)
    want_big.flat[[7, 0, 0, 5]] = [1.0, 2.0, 5.0, 6.0]
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, big)), want_big)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, small[0])), np.array([0, 4, 3], F32))
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, small[1])), np.array([0, -4, -3], F32))
    digest = mmsb.state_digest(state)
    assert mmsb.state_digest(mmsb.replay_to_epoch(state, epoch)) == digest
    mmsb.mmsb_stop(state)
    s = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(s) == digest
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, small[1])), np.array([0, -4, -3], F32))
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, big)), want_big)
    finally:
        s.close()


def test_ring_drain_into_a_snapshot_or_a_stopped_state(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s", fsync="never")
    (a,) = pages(state, n=1)
    ring = append(mmsb.delta_ring(2, K, jnp.float32), jnp.array([a]), jnp.array([[0, 1]]),
                  jnp.array([[1.0, 1.0]], jnp.float32))
    snap = mmsb.replay_to_epoch(state, state.epoch)
    with pytest.raises(mmsb.ReadOnlyError):
        snap.drain_ring(ring)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, a)), np.zeros(8, F32))
    mmsb.mmsb_stop(state)
    with pytest.raises(mmsb.StateClosedError):
        state.drain_ring(ring)
