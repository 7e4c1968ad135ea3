"""The in-jit tree journal: tree_ring / record_tree inside jit and lax.scan, and its drain."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import monitoring

import mmsb_jax as mmsb

from helpers import as_bits

_COMPILES = []
monitoring.register_event_duration_secs_listener(
    lambda name, _d, **_kw: _COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
)


def like():
    return {"w": jnp.zeros((3, 2)), "count": jnp.int32(0), "ema": jnp.zeros(4, jnp.bfloat16), "on": jnp.array(False)}


def advance(tree):
    return {
        "w": tree["w"] * 1.5 + 1.0,
        "count": tree["count"] + 1,
        "ema": (tree["ema"].astype(jnp.float32) * 0.5 + 1.0).astype(jnp.bfloat16),
        "on": ~tree["on"],
    }


def make_chunk(length):
    @chex.assert_max_traces(n=1)
    def chunk(ring, tree, start):
        def body(carry, i):
            ring, tree = carry
            tree = advance(tree)
            return (mmsb.record_tree(ring, tree, start + i), tree), tree

        (ring, tree), ys = jax.lax.scan(body, (ring, tree), jnp.arange(length, dtype=jnp.int32))
        return ring, tree, ys

    return jax.jit(chunk, donate_argnums=(0,))


def test_each_recorded_step_is_its_own_epoch_and_loads_back(tmp_path):
    chex.clear_trace_counter()
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path)
    ring = mmsb.tree_ring(state, "train", like(), steps=8)
    chunk = make_chunk(4)
    tree, seen = like(), {}
    for c in range(3):
        ring, tree, ys = chunk(ring, tree, jnp.int32(10 * c))
        epoch, ring = state.drain_ring(ring)
        assert epoch == state.epoch and int(ring.count) == 0
        for k in range(4):
            seen[10 * c + k] = jax.tree_util.tree_map(lambda y: np.asarray(y[k]), ys)
    steps = mmsb.tree_steps(state, "train")
    assert [s for s, _ in steps] == sorted(seen) and [e for _, e in steps] == list(range(1, 13))
    for s, e in steps:  # atomic: one batch per step, tagged with the step
        recs = mmsb.query_log(state, epochs=(e, e))
        assert all(r.batched and r.source == "jit-ring" for r in recs) and recs[-1].kind.name == "TREE_STEP"
        assert recs[-1].step == s
    mmsb.mmsb_stop(state)
    reopened = mmsb.mmsb_open(path)
    for s in (0, 2, 11, 23):  # steps inside chunks, after a reopen
        got = mmsb.load_tree(reopened, "train", step=s)
        for key in seen[s]:
            np.testing.assert_array_equal(as_bits(got[key]), as_bits(seen[s][key]), err_msg=f"{s} {key}")
    mmsb.mmsb_stop(reopened)


def test_drains_of_any_count_compile_nothing_after_warm_up(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    tree = like()
    ring = mmsb.tree_ring(state, "t", tree, steps=16)
    record = jax.jit(mmsb.record_tree, donate_argnums=(0,))
    step = 0
    for _ in range(2):  # warm-up: the first drains, and the pages taking the steps
        tree = advance(tree)
        ring = record(ring, tree, jnp.int32(step))
        step += 1
        _, ring = state.drain_ring(ring)
        mmsb.load_tree(state, "t")
    rng = np.random.default_rng(0)
    before = len(_COMPILES)
    for _ in range(50):
        for _ in range(int(rng.integers(1, 17))):
            tree = advance(tree)
            ring = record(ring, tree, jnp.int32(step))
            step += 1
        _, ring = state.drain_ring(ring)
    mmsb.load_tree(state, "t")
    assert len(_COMPILES) - before == 0
    assert mmsb.tree_steps(state, "t")[-1][0] == step - 1
    mmsb.mmsb_stop(state)


def test_overflow_is_visible_inside_jit_and_at_drain(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    tree = like()
    ring = mmsb.tree_ring(state, "t", tree, steps=3)

    @jax.jit
    def run(ring, tree):
        def body(carry, i):
            ring, tree, flagged = carry
            ring = mmsb.record_tree(ring, tree, i)
            return (ring, tree, flagged + ring.overflowed.astype(jnp.int32)), None

        return jax.lax.scan(body, (ring, tree, jnp.int32(0)), jnp.arange(5, dtype=jnp.int32))[0]

    ring, _, flagged = run(ring, tree)
    assert int(flagged) == 2 and bool(ring.overflowed)  # steps 3 and 4 did not fit
    digest = mmsb.state_digest(state)
    with pytest.raises(mmsb.RingOverflowError, match="5 steps"):
        state.drain_ring(ring)
    assert mmsb.state_digest(state) == digest and state.epoch == 0
    mmsb.mmsb_stop(state)


def test_a_donated_ring_is_written_in_place(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    tree = {"w": jnp.zeros((256, 64)), "n": jnp.int32(0)}
    ring = mmsb.tree_ring(state, "t", tree, steps=8)
    record = jax.jit(mmsb.record_tree, donate_argnums=(0,))
    ring = record(ring, tree, jnp.int32(0))  # compile
    before = [b.unsafe_buffer_pointer() for b in ring.buffers]
    for s in range(1, 4):
        ring = record(ring, {"w": jnp.full((256, 64), float(s)), "n": jnp.int32(s)}, jnp.int32(s))
    assert [b.unsafe_buffer_pointer() for b in ring.buffers] == before
    epoch, ring = state.drain_ring(ring)  # the loop goes on with a second ring while the writer reads the first
    second = [b.unsafe_buffer_pointer() for b in ring.buffers]
    assert second != before
    ring = record(ring, {"w": jnp.ones((256, 64)), "n": jnp.int32(9)}, jnp.int32(9))
    assert [b.unsafe_buffer_pointer() for b in ring.buffers] == second
    state._lock.writer.wait_idle()  # the first ring is read through: the next drain hands it back
    epoch, ring = state.drain_ring(ring)
    assert [b.unsafe_buffer_pointer() for b in ring.buffers] == before
    ring = record(ring, {"w": jnp.full((256, 64), 7.0), "n": jnp.int32(10)}, jnp.int32(10))
    assert [b.unsafe_buffer_pointer() for b in ring.buffers] == before
    epoch, ring = state.drain_ring(ring)
    assert mmsb.load_tree(state, "t", step=3)["w"][0, 0] == 3.0
    assert mmsb.load_tree(state, "t", step=9)["w"][0, 0] == 1.0 and mmsb.load_tree(state, "t")["n"] == 10
    mmsb.mmsb_stop(state)


@pytest.mark.parametrize(
    "tree, needle",
    [
        ({"w": jnp.zeros((3, 2))}, "structure"),
        ({**like(), "w": jnp.zeros((2, 3))}, "['w']"),
        ({**like(), "count": jnp.float32(0)}, "['count']"),
        ({**like(), "ema": jnp.zeros(4, jnp.float32)}, "['ema']"),
    ],
)
def test_record_tree_refuses_a_tree_that_does_not_fit_while_tracing(tmp_path, tree, needle):
    state = mmsb.mmsb_start(tmp_path / "s")
    ring = mmsb.tree_ring(state, "t", like(), steps=2)
    with pytest.raises(mmsb.InvalidArgumentError) as ei:
        jax.jit(mmsb.record_tree)(ring, tree, 0)
    assert needle in str(ei.value)
    with pytest.raises(mmsb.InvalidArgumentError, match="integer"):
        jax.jit(mmsb.record_tree)(ring, like(), 1.5)
    mmsb.mmsb_stop(state)


@pytest.mark.parametrize(
    "step, needle",
    [
        (2**31, "does not fit"), (-(2**31) - 1, "does not fit"), (10**30, "does not fit"),
        (np.uint32(2**32 - 1), "does not fit"), (np.int64(2**33 + 5), "does not fit"),
        (None, "integer scalar"), ("3", "integer scalar"), (True, "integer scalar"),
        (np.arange(2), "integer scalar"),
    ],
)
def test_record_tree_refuses_a_step_outside_int32_instead_of_wrapping(tmp_path, step, needle):
    """Concrete steps are checked against the ring's int32 steps (they used to wrap:
    uint32 2**32-1 was journaled as step -1); the ring is left as it was."""
    state = mmsb.mmsb_start(tmp_path / "s")
    ring = mmsb.tree_ring(state, "t", like(), steps=2)
    with pytest.raises(mmsb.InvalidArgumentError, match=needle):
        mmsb.record_tree(ring, like(), step)
    assert int(ring.count) == 0
    ring = mmsb.record_tree(ring, like(), 2**31 - 1)  # the largest that fits
    assert int(ring.steps[0]) == 2**31 - 1
    mmsb.mmsb_stop(state)


def test_a_traced_step_wider_than_int32_is_refused_and_narrower_ones_fit(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    ring = mmsb.tree_ring(state, "t", like(), steps=4)
    record = jax.jit(mmsb.record_tree)
    with pytest.raises(mmsb.InvalidArgumentError, match=r"uint32.*astype\(jnp.int32\)"):
        record(ring, like(), jnp.uint32(5))
    for i, dtype in enumerate((jnp.int8, jnp.uint16, jnp.int32)):
        ring = record(ring, like(), jnp.asarray(i + 1, dtype))
    _, ring = state.drain_ring(ring)
    assert [s for s, _ in mmsb.tree_steps(state, "t")] == [1, 2, 3]
    mmsb.mmsb_stop(state)


def test_steps_must_increase_and_nothing_is_applied_otherwise(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    tree = like()
    mmsb.save_tree(state, "t", tree, step=5)
    ring = mmsb.tree_ring(state, "t", tree, steps=4)
    digest = mmsb.state_digest(state)
    for steps in ([6, 6], [7, 6], [5]):
        r = ring
        for s in steps:
            r = mmsb.record_tree(r, tree, s)
        with pytest.raises(mmsb.InvalidArgumentError, match="steps must increase"):
            state.drain_ring(r)
        assert mmsb.state_digest(state) == digest and mmsb.tree_steps(state, "t") == [(5, 1)]
    with pytest.raises(mmsb.InvalidArgumentError, match="structure"):
        mmsb.tree_ring(state, "t", {"w": jnp.zeros((3, 2))}, steps=2)
    with pytest.raises(mmsb.InvalidArgumentError, match="steps"):
        mmsb.tree_ring(state, "u", tree, steps=0)
    r = mmsb.record_tree(mmsb.record_tree(ring, advance(tree), 6), advance(advance(tree)), 9)
    epoch, _ = state.drain_ring(r)
    assert mmsb.tree_steps(state, "t") == [(5, 1), (6, 2), (9, 3)] and epoch == 3
    mmsb.save_tree(state, "t", tree, step=10)  # the host path continues the same tree
    assert mmsb.load_tree(state, "t", step=9)["count"] == 2
    mmsb.mmsb_stop(state)


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_drain_under_each_fsync_policy(tmp_path, fsync):
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path, fsync=fsync)
    ring = mmsb.tree_ring(state, "t", like(), steps=4)
    tree = like()
    for s in range(3):
        tree = advance(tree)
        ring = mmsb.record_tree(ring, tree, s)
    epoch, ring = state.drain_ring(ring)
    if fsync == "always":  # durable when the drain returns: in the files, unflushed
        recs = mmsb.log.read_records(path / "log").records
        assert [r.step for r in recs if r.kind.name == "TREE_STEP"] == [0, 1, 2]
    digest = mmsb.state_digest(state)
    mmsb.mmsb_stop(state)
    reopened = mmsb.mmsb_open(path)
    assert mmsb.state_digest(reopened) == digest
    assert mmsb.load_tree(reopened, "t", step=2)["ema"].dtype == ml_dtypes.bfloat16
    mmsb.mmsb_stop(reopened)


def test_ring_docs_example_with_shape_dtype_structs(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    spec = jax.eval_shape(like)
    ring = mmsb.tree_ring(state, "t", spec, steps=2)
    assert [b.shape for b in ring.buffers] == [(2,), (2, 4), (2,), (2, 3, 2)]  # count, ema, on, w
    step = functools.partial(mmsb.record_tree, step=jnp.int32(0))
    ring = jax.jit(step)(ring, like())
    assert int(ring.count) == 1
    mmsb.mmsb_stop(state)
