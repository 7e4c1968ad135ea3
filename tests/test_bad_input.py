"""The bad-input matrix: every public function, fed wrong types, dtypes (64-bit NumPy too),
shapes, ids, indices, tracers, deleted pages and stopped states, raises an ``MMSBError``
that names the offending value, and leaves the state bit-identical (``state_digest``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import MMSBError, StateClosedError

F32 = np.float32


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    """f32 (4,) pages 0-2 (0 -> 2 edge), an int32 (4,) page 3, a uint8 (8,) page 4, a float32
    (2, 3) page 5, and page 6 deleted."""
    s = mmsb.mmsb_start(tmp_path_factory.mktemp("bad") / "s")
    for _ in range(3):
        mmsb.create_page(s, size=4, dtype=jnp.float32)
    mmsb.create_page(s, size=4, dtype=jnp.int32)
    mmsb.create_page(s, size=8)
    mmsb.create_page(s, shape=(2, 3), dtype=jnp.float32)
    mmsb.create_page(s, size=4, dtype=jnp.float32)
    mmsb.delete_page(s, 6)
    mmsb.add_dependency(s, 0, 2)
    mmsb.update_page(s, 0, np.arange(4, dtype=F32))
    mmsb.update_page(s, 3, np.arange(4, dtype=np.int32))
    yield s
    s.close()


def _tracer_update(s):
    return jax.jit(lambda x: mmsb.update_page(s, 0, x))(jnp.ones(4, jnp.float32))


SP = mmsb.SparseDelta
DD = mmsb.DenseDelta

CASES = {
    # page ids
    "query_page(-1)": lambda s: mmsb.query_page(s, -1),
    "query_page(2**40)": lambda s: mmsb.query_page(s, 2**40),
    "query_page(True)": lambda s: mmsb.query_page(s, True),
    "query_page(1.0)": lambda s: mmsb.query_page(s, 1.0),
    "query_page('0')": lambda s: mmsb.query_page(s, "0"),
    "query_page(None)": lambda s: mmsb.query_page(s, None),
    "query_page(deleted)": lambda s: mmsb.query_page(s, 6),
    "query_page(nan)": lambda s: mmsb.query_page(s, float("nan")),
    "update_page(deleted)": lambda s: mmsb.update_page(s, 6, np.zeros(4, F32)),
    "delete_page(deleted)": lambda s: mmsb.delete_page(s, 6),
    "delete_page([0])": lambda s: mmsb.delete_page(s, [0]),
    "route_delta(deleted)": lambda s: mmsb.route_delta(s, 6, mmsb.sparse_delta([0], jnp.ones(1), 4)),
    # page data
    "update_page(float64)": lambda s: mmsb.update_page(s, 0, np.zeros(4)),
    "update_page(int64 on int32)": lambda s: mmsb.update_page(s, 3, np.zeros(4, np.int64)),
    "update_page(float32 on int32)": lambda s: mmsb.update_page(s, 3, np.zeros(4, F32)),
    "update_page(shape 5)": lambda s: mmsb.update_page(s, 0, np.zeros(5, F32)),
    "update_page(flat on 2-D)": lambda s: mmsb.update_page(s, 5, np.zeros(6, F32)),
    "update_page(str)": lambda s: mmsb.update_page(s, 0, "abcd"),
    "update_page(None)": lambda s: mmsb.update_page(s, 0, None),
    "update_page(object)": lambda s: mmsb.update_page(s, 0, object()),
    "update_page([1, 2**40] on int32)": lambda s: mmsb.update_page(s, 3, [1, 2, 3, 2**40]),
    "update_page([256] on uint8)": lambda s: mmsb.update_page(s, 4, [256] * 8),
    "update_page([0.5] on int32)": lambda s: mmsb.update_page(s, 3, [0.5, 1, 2, 3]),
    "update_page(ragged)": lambda s: mmsb.update_page(s, 0, [[1], [2, 3]]),
    "update_page(tracer)": _tracer_update,
    # deltas
    "route_delta(None)": lambda s: mmsb.route_delta(s, 0, None),
    "route_delta(array)": lambda s: mmsb.route_delta(s, 0, np.zeros(4, F32)),
    "sparse oob": lambda s: mmsb.route_delta(s, 0, SP(np.array([4]), np.ones(1, F32), (4,))),
    "sparse negative": lambda s: mmsb.route_delta(s, 0, SP(np.array([-1]), np.ones(1, F32), (4,))),
    "sparse float indices": lambda s: mmsb.route_delta(s, 0, SP(np.array([0.5]), np.ones(1, F32), (4,))),
    "sparse 2-D indices": lambda s: mmsb.route_delta(s, 0, SP(np.zeros((1, 1), np.int32), np.ones((1, 1), F32), (4,))),
    "sparse float64 values": lambda s: mmsb.route_delta(s, 0, SP(np.array([0]), np.ones(1), (4,))),
    "sparse wrong shape meta": lambda s: mmsb.route_delta(s, 0, SP(np.array([0]), np.ones(1, F32), (5,))),
    "sparse count mismatch": lambda s: mmsb.route_delta(s, 0, SP(np.array([0, 1]), np.ones(1, F32), (4,))),
    "dense int mask": lambda s: mmsb.route_delta(s, 0, DD(np.ones(4, np.int32), np.ones(4, F32))),
    "dense float64 payload": lambda s: mmsb.route_delta(s, 0, DD(np.ones(4, bool), np.ones(4))),
    "dense shape": lambda s: mmsb.route_delta(s, 0, DD(np.ones(5, bool), np.ones(5, F32))),
    "accumulate None semiring": lambda s: mmsb.route_delta(s, 0, mmsb.AccumulateDelta(np.ones(4, F32), None)),
    "accumulate bool page": lambda s: mmsb.route_delta(
        s, 0, mmsb.AccumulateDelta(np.ones(4, bool), mmsb.semirings.REAL)),
    "accumulate float64": lambda s: mmsb.route_delta(s, 0, mmsb.AccumulateDelta(np.ones(4), mmsb.semirings.REAL)),
    "traced sparse values": lambda s: jax.jit(lambda v: mmsb.route_delta(s, 0, SP(jnp.array([0]), v, (4,))))(jnp.ones(1)),
    # batches
    "batch None": lambda s: mmsb.batch_route_deltas(s, None),
    "batch of non-pairs": lambda s: mmsb.batch_route_deltas(s, [1, 2]),
    "batch with a bad third entry": lambda s: mmsb.batch_route_deltas(s, [
        (0, mmsb.sparse_delta([0], jnp.ones(1), 4)), (1, mmsb.sparse_delta([1], jnp.ones(1), 4)),
        (3, SP(np.array([0]), np.ones(1, F32), (4,)))]),
    "batch deleted page": lambda s: mmsb.batch_route_deltas(s, [(6, mmsb.sparse_delta([0], jnp.ones(1), 4))]),
    "sparse batch ids 2-D": lambda s: mmsb.route_sparse_batch(s, [[0]], [[0]], np.ones((1, 1), F32)),
    "sparse batch float ids": lambda s: mmsb.route_sparse_batch(s, [0.0], [[0]], np.ones((1, 1), F32)),
    "sparse batch oob": lambda s: mmsb.route_sparse_batch(s, [0], [[9]], np.ones((1, 1), F32)),
    "sparse batch float64": lambda s: mmsb.route_sparse_batch(s, [0], [[0]], np.ones((1, 1))),
    "sparse batch shapes": lambda s: mmsb.route_sparse_batch(s, [0, 1], [[0]], np.ones((1, 1), F32)),
    "sparse batch deleted": lambda s: mmsb.route_sparse_batch(s, [6], [[0]], np.ones((1, 1), F32)),
    "sparse batch None": lambda s: mmsb.route_sparse_batch(s, None, None, None),
    "sparse batch ragged": lambda s: mmsb.route_sparse_batch(s, [0, 1], [[0], [0, 1]], [[1.0], [1.0, 2.0]]),
    # creation
    "create_page(size=0)": lambda s: mmsb.create_page(s, size=0),
    "create_page(size=-1)": lambda s: mmsb.create_page(s, size=-1),
    "create_page(size=2.0)": lambda s: mmsb.create_page(s, size=2.0),
    "create_page(size=True)": lambda s: mmsb.create_page(s, size=True),
    "create_page(size='4')": lambda s: mmsb.create_page(s, size="4"),
    "create_page()": lambda s: mmsb.create_page(s),
    "create_page(dtype=str)": lambda s: mmsb.create_page(s, size=4, dtype=str),
    "create_page(dtype=complex64)": lambda s: mmsb.create_page(s, size=4, dtype=np.complex64),
    "create_page(dtype=float64, no x64)": lambda s: mmsb.create_page(s, size=4, dtype=np.float64),
    "create_page(dtype='nope')": lambda s: mmsb.create_page(s, size=4, dtype="nope"),
    "create_page(location='tpu')": lambda s: mmsb.create_page(s, size=4, location="tpu"),
    "create_page(shape=(2, 0))": lambda s: mmsb.create_page(s, shape=(2, 0)),
    "create_page(shape=(2, -1))": lambda s: mmsb.create_page(s, shape=(2, -1)),
    "create_page(shape='ab')": lambda s: mmsb.create_page(s, shape="ab"),
    "create_page(size=2**31+1)": lambda s: mmsb.create_page(s, size=2**31 + 1),
    "create_page(size/shape disagree)": lambda s: mmsb.create_page(s, size=5, shape=(2, 3)),
    "create_pages(-1)": lambda s: mmsb.create_pages(s, -1, size=4),
    "create_pages(1.5)": lambda s: mmsb.create_pages(s, 1.5, size=4),
    "create_pages(4e8 x 1 KiB)": lambda s: mmsb.create_pages(s, 400_000_000, size=1024),
    # dependencies
    "add_dependency(cycle)": lambda s: mmsb.add_dependency(s, 2, 0),
    "add_dependency(self)": lambda s: mmsb.add_dependency(s, 1, 1),
    "add_dependency(other pool)": lambda s: mmsb.add_dependency(s, 0, 5),
    "add_dependency(deleted)": lambda s: mmsb.add_dependency(s, 0, 6),
    "add_dependency(weight nan)": lambda s: mmsb.add_dependency(s, 0, 1, weight=float("nan")),
    "add_dependency(weight str)": lambda s: mmsb.add_dependency(s, 0, 1, weight="x"),
    "add_dependency(edge_type)": lambda s: mmsb.add_dependency(s, 0, 1, edge_type="nope"),
    "remove_dependency(missing)": lambda s: mmsb.remove_dependency(s, 1, 2),
    # log, replay, tools
    "replay_to_epoch(-1)": lambda s: mmsb.replay_to_epoch(s, -1),
    "replay_to_epoch(past)": lambda s: mmsb.replay_to_epoch(s, 10**6),
    "replay_to_epoch(1.5)": lambda s: mmsb.replay_to_epoch(s, 1.5),
    "replay_to_epoch('1')": lambda s: mmsb.replay_to_epoch(s, "1"),
    "query_log(epochs reversed)": lambda s: mmsb.query_log(s, epochs=(5, 2)),
    "query_log(epochs=5)": lambda s: mmsb.query_log(s, epochs=5),
    "query_log(kinds='nope')": lambda s: mmsb.query_log(s, kinds="nope"),
    "query_log(page_id=True)": lambda s: mmsb.query_log(s, page_id=True),
    "diff(reversed)": lambda s: mmsb.diff(s, 5, 2),
    "diff(past)": lambda s: mmsb.diff(s, 1, 10**6),
    "checkpoint(dir=5)": lambda s: mmsb.checkpoint(s, 5),
    "observe(not callable)": lambda s: s.observe(0, 5),
    "observe(deleted)": lambda s: s.observe(6, print),
    "drain_ring(None)": lambda s: s.drain_ring(None),
    "inspect_state(missing)": lambda s: mmsb.inspect_state(s.path + "-missing"),
    "mmsb_open(missing)": lambda s: mmsb.mmsb_open(s.path + "-missing"),
    "mmsb_start(existing)": lambda s: mmsb.mmsb_start(s.path),
    "mmsb_start(fsync)": lambda s: mmsb.mmsb_start(fsync="sometimes"),
    "mmsb_start(semiring)": lambda s: mmsb.mmsb_start(semiring="nope"),
    "mmsb_start(mesh)": lambda s: mmsb.mmsb_start(mesh="mesh"),
    "mmsb_start(segment_bytes=10)": lambda s: mmsb.mmsb_start(segment_bytes=10),
    "mmsb_open(recovery)": lambda s: mmsb.mmsb_open(s.path, recovery="yolo"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_an_mmsb_error_and_changes_nothing(st, case):
    before, epoch = mmsb.state_digest(st), st.epoch
    with pytest.raises(MMSBError) as e:
        CASES[case](st)
    assert str(e.value), case
    assert mmsb.state_digest(st) == before and st.epoch == epoch, case


def test_the_state_still_works_after_the_matrix(st):
    epoch = st.epoch
    assert mmsb.update_page(st, 1, np.ones(4, F32)) == epoch + 1
    assert mmsb.query_page(st, 2).tolist() == [0.0, 1.0, 2.0, 3.0]


STOPPED = {
    "create_page": lambda s: mmsb.create_page(s, size=4),
    "create_pages": lambda s: mmsb.create_pages(s, 2, size=4),
    "update_page": lambda s: mmsb.update_page(s, 0, np.zeros(4, F32)),
    "route_delta": lambda s: mmsb.route_delta(s, 0, mmsb.sparse_delta([0], jnp.ones(1), 4)),
    "batch_route_deltas": lambda s: mmsb.batch_route_deltas(s, [(0, mmsb.sparse_delta([0], jnp.ones(1), 4))]),
    "route_sparse_batch": lambda s: mmsb.route_sparse_batch(s, [0], [[0]], np.ones((1, 1), F32)),
    "query_page": lambda s: mmsb.query_page(s, 0),
    "delete_page": lambda s: mmsb.delete_page(s, 0),
    "add_dependency": lambda s: mmsb.add_dependency(s, 0, 1),
    "remove_dependency": lambda s: mmsb.remove_dependency(s, 0, 1),
    "checkpoint": lambda s: mmsb.checkpoint(s),
    "replay_to_epoch": lambda s: mmsb.replay_to_epoch(s, 1),
    "compact_log": lambda s: mmsb.compact_log(s),
    "drain_ring": lambda s: s.drain_ring(mmsb.delta_ring(4, 1, jnp.float32)),
}


@pytest.mark.parametrize("call", list(STOPPED))
def test_a_stopped_state_refuses_everything(tmp_path, call):
    s = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_pages(s, 2, size=4, dtype=jnp.float32)
    s.close()
    with pytest.raises(StateClosedError):
        STOPPED[call](s)
