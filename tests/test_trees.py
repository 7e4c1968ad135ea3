"""The tree journal on the host: save_tree / load_tree / tree_steps / tree_diff / find_step.

Every step is checked against a copy kept in plain Python (numpy arrays), bit for bit, before
and after reopening; bad input changes nothing (``state_digest`` equal).
"""

import collections
import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mmsb
from mmsb_jax.shell._state import MMSBState
from mmsb_jax.shell._replay import rebuild

from helpers import as_bits, rand_array

NT = collections.namedtuple("NT", "a b")
DTYPES = [np.bool_, np.int8, np.uint8, np.int32, np.float32, np.float16, ml_dtypes.bfloat16]
SHAPES = [(), (3,), (2, 4), (6, 2)]


def bits_equal(got, want) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    return got.shape == want.shape and got.dtype == want.dtype and np.array_equal(as_bits(got), as_bits(want))


def assert_tree_equal(got, want):
    gl, gd = jax.tree_util.tree_flatten(got)
    wl, wd = jax.tree_util.tree_flatten(want)
    assert gd == wd, (gd, wd)
    for i, (g, w) in enumerate(zip(gl, wl)):
        assert bits_equal(g, w), (i, g, w)


def full_replay_digest(path) -> str:
    snap = MMSBState(path, _snapshot=True)
    rebuild(snap, path, checkpoint=None)
    return snap.digest()


# --------------------------------------------------------------------------- random trees
class Leaf:
    """A leaf of a generated tree spec (not a pytree node, so tree_map stops at it)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __repr__(self):
        return f"Leaf({self.shape}, {np.dtype(self.dtype).name})"


leaf_specs = st.builds(Leaf, st.sampled_from(SHAPES), st.sampled_from(DTYPES))


def containers(children):
    return st.one_of(
        st.dictionaries(st.sampled_from(["a", "b", "c", "w"]), children, min_size=1, max_size=3),
        st.dictionaries(st.integers(0, 3), children, min_size=1, max_size=2),
        st.lists(children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=2).map(tuple),
        st.tuples(children, children).map(lambda t: NT(*t)),
        st.tuples(children, st.just(None)).map(lambda t: NT(*t)),
    )


tree_specs = st.recursive(leaf_specs, containers, max_leaves=6)


def rand_leaf(rng, shape, dtype):
    """Random values of any shape, scalars included (floats with NaN and -0.0)."""
    return rand_array(rng, (int(np.prod(shape, dtype=np.int64)),), dtype).reshape(shape)


def build(spec, rng):
    """A tree of numpy arrays from a spec of :class:`Leaf` leaves."""
    return jax.tree_util.tree_map(lambda s: rand_leaf(rng, s.shape, s.dtype), spec)


def change(tree, rng):
    """A copy of ``tree`` with a random change pattern per leaf: none, one element, one row,
    everything, a NaN or a -0.0."""
    def one(x):
        x = np.array(x)
        kind = rng.integers(0, 6)
        flat = x.reshape(-1)
        if kind == 1:
            flat[rng.integers(0, flat.size)] = rand_leaf(rng, (1,), x.dtype)[0]
        elif kind == 2 and x.ndim >= 2:
            x[rng.integers(0, x.shape[0])] = rand_leaf(rng, x.shape[1:], x.dtype)
        elif kind == 3:
            x = rand_leaf(rng, x.shape, x.dtype)
        elif kind == 4 and x.dtype.kind == "f" or kind == 4 and x.dtype == ml_dtypes.bfloat16:
            flat[0] = np.nan
        elif kind == 5 and (x.dtype.kind == "f" or x.dtype == ml_dtypes.bfloat16):
            flat[-1] = -0.0
        return x
    return jax.tree_util.tree_map(one, tree)


@settings(max_examples=12)
@given(spec=tree_specs, seed=st.integers(0, 2**16), steps=st.integers(1, 4))
def test_load_tree_every_step_equals_a_plain_copy(tmp_path_factory, spec, seed, steps):
    rng = np.random.default_rng(seed)
    path = str(tmp_path_factory.mktemp("t") / "s")
    state = mmsb.mmsb_start(path)
    tree = build(spec, rng)
    copies = []
    for s in range(steps):
        epoch = mmsb.save_tree(state, "t", tree, step=3 * s)
        assert epoch == state.epoch
        copies.append(jax.tree_util.tree_map(np.array, tree))
        if s == steps // 2:
            mmsb.checkpoint(state)
        tree = change(tree, rng)
    assert [e for _, e in mmsb.tree_steps(state, "t")] == list(range(1, steps + 1))  # one epoch per step
    for s, want in enumerate(copies):
        assert_tree_equal(mmsb.load_tree(state, "t", step=3 * s), want)
    digest = mmsb.state_digest(state)
    mmsb.mmsb_stop(state)
    reopened = mmsb.mmsb_open(path)  # checkpoint + tail
    assert mmsb.state_digest(reopened) == digest == full_replay_digest(path)
    for s, want in enumerate(copies):
        assert_tree_equal(mmsb.load_tree(reopened, "t", step=3 * s), want)
    mmsb.mmsb_stop(reopened)


def test_only_what_changed_is_written(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    emb = np.zeros((1000, 16), np.float32)
    tree = {"emb": emb, "dense": np.ones(64, np.float32), "frozen": np.ones(8, np.int32), "count": np.int32(0)}
    mmsb.save_tree(state, "t", tree, step=0)

    def records(epoch):
        return [r for r in mmsb.query_log(state, epochs=(epoch, epoch)) if r.kind.name in ("ROWS", "SPARSE")]

    emb2 = emb.copy()
    emb2[[3, 500, 999]] = 1.0  # three whole rows: ROWS of those rows
    e1 = mmsb.save_tree(state, "t", dict(tree, emb=emb2, dense=np.full(64, 2, np.float32), count=np.int32(1)), step=1)
    recs = {r.page_id: r for r in records(e1)}
    ids = state._trees["t"].page_ids  # leaves: count, dense, emb, frozen
    assert sorted(recs) == sorted([ids[0], ids[1], ids[2]])  # frozen wrote nothing
    rows = recs[ids[2]]
    assert rows.kind.name == "ROWS" and rows.row_len == 16 and rows.rows.tolist() == [3, 500, 999]
    whole = recs[ids[1]]
    assert whole.kind.name == "ROWS" and whole.rows.tolist() == [0] and whole.row_len == 64  # raw bytes
    emb3 = emb2.copy()
    emb3[[10, 20], [1, 2]] = 5.0  # two scattered elements: SPARSE is fewer bytes than two rows
    e2 = mmsb.save_tree(state, "t", dict(tree, emb=emb3, dense=np.full(64, 2, np.float32), count=np.int32(1)), step=2)
    recs = records(e2)
    assert [(r.kind.name, r.page_id, r.indices.tolist()) for r in recs] == [("SPARSE", ids[2], [161, 322])]
    e3 = mmsb.save_tree(state, "t", dict(tree, emb=emb3, dense=np.full(64, 2, np.float32), count=np.int32(1)), step=3)
    assert records(e3) == []  # nothing changed: only the step tag
    assert [r.kind.name for r in mmsb.query_log(state, epochs=(e3, e3))] == ["TREE_STEP"]
    snap = mmsb.replay_to_epoch(state, e2)
    np.testing.assert_array_equal(np.asarray(mmsb.load_tree(snap, "t")["emb"]), emb3)
    mmsb.mmsb_stop(state)


def test_mixed_dtypes_are_one_epoch_per_step(tmp_path):
    """An optax-like state (int32 count, float moments, bfloat16, bool) is atomic per step."""
    import optax

    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    opt = optax.adam(0.1)
    ostate = opt.init(params)
    state = mmsb.mmsb_start(tmp_path / "s")
    for s in range(3):
        grads = jax.tree_util.tree_map(lambda x: jnp.ones_like(x), params)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
            updates, ostate = opt.update(grads, ostate, params)
        params = optax.apply_updates(params, updates)
        tree = {"params": params, "opt": ostate, "ok": jnp.array(True), "ema": jnp.full(2, s, jnp.bfloat16)}
        epoch = mmsb.save_tree(state, "train", tree, step=s)
        batch = mmsb.query_log(state, epochs=(epoch, epoch))
        assert batch and all(r.batched for r in batch) and {r.epoch for r in batch} == {epoch}
        assert batch[-1].kind.name == "TREE_STEP" and batch[-1].step == s
    got = mmsb.load_tree(state, "train", step=2)
    assert type(got["opt"][0]).__name__ == "ScaleByAdamState" and got["opt"][0].count.dtype == jnp.int32
    assert_tree_equal(got, tree)
    mmsb.mmsb_stop(state)


def test_flax_nnx_state_round_trips_with_its_types(tmp_path):
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)

    _, params = nnx.split(MLP(nnx.Rngs(0)))
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path)
    mmsb.save_tree(state, "nnx", params)
    mmsb.mmsb_stop(state)
    reopened = mmsb.mmsb_open(path)
    got = mmsb.load_tree(reopened, "nnx")
    assert type(got) is nnx.State and type(got["l1"]["kernel"]) is nnx.Param
    assert_tree_equal(got, params)
    mmsb.mmsb_stop(reopened)


def test_unimported_classes_come_back_as_dicts_and_like_restores_them(tmp_path):
    """A node class that is not imported when loading is rebuilt as a dict of its keys, never
    imported; ``like=`` gives the exact types back (checked leaf by leaf)."""
    import sys
    import types

    mod = types.ModuleType("mmsb_test_fake_models")
    Pair = collections.namedtuple("Pair", "left right")
    Pair.__module__ = mod.__name__
    mod.Pair = Pair
    sys.modules[mod.__name__] = mod
    tree = {"p": Pair(np.ones(2, np.float32), np.int32(3))}
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path)
    mmsb.save_tree(state, "t", tree)
    assert type(mmsb.load_tree(state, "t")["p"]) is Pair
    mmsb.mmsb_stop(state)
    del sys.modules[mod.__name__]
    reopened = mmsb.mmsb_open(path)
    plain = mmsb.load_tree(reopened, "t")
    assert type(plain["p"]) is dict and sorted(plain["p"]) == ["left", "right"]
    np.testing.assert_array_equal(plain["p"]["left"], tree["p"].left)
    exact = mmsb.load_tree(reopened, "t", like=tree)
    assert type(exact["p"]) is Pair
    assert_tree_equal(exact, tree)
    with pytest.raises(mmsb.InvalidDeltaError, match=r"\['p'\]\.right"):
        mmsb.load_tree(reopened, "t", like={"p": Pair(np.ones(2, np.float32), np.float32(3))})
    with pytest.raises(mmsb.InvalidDeltaError, match="leaf 1"):
        mmsb.load_tree(reopened, "t", like={"p": Pair(np.ones(2, np.float32), None)})
    mmsb.mmsb_stop(reopened)


BAD_SAVES = {
    "shape-changed": (lambda t: dict(t, w=np.zeros((3, 3), np.float32)), mmsb.InvalidDeltaError, ("['w']", "[3, 3]")),
    "dtype-changed": (lambda t: dict(t, w=np.zeros((2, 3), np.float16)), mmsb.InvalidDeltaError, ("['w']", "float16")),
    "python-float": (lambda t: dict(t, n=1.5), mmsb.InvalidArgumentError, ("['n']", "float")),
    "string-leaf": (lambda t: dict(t, n="x"), mmsb.InvalidArgumentError, ("['n']", "str")),
    "new-key": (lambda t: dict(t, z=np.ones(1, np.float32)), mmsb.InvalidArgumentError, ("['z']",)),
    "lost-key": (lambda t: {"w": t["w"]}, mmsb.InvalidArgumentError, ("['n']",)),
    "container-type": (lambda t: collections.OrderedDict(sorted(t.items())), mmsb.InvalidArgumentError,
                       ("container",)),
    "object-dtype": (lambda t: dict(t, n=np.array(["a"], object)), mmsb.InvalidArgumentError, ("['n']", "object")),
    "complex": (lambda t: dict(t, n=np.ones(1, np.complex64)), mmsb.InvalidArgumentError, ("['n']", "complex64")),
    "int64-without-x64": (lambda t: dict(t, n=np.ones(1, np.int64)), mmsb.InvalidArgumentError, ("['n']", "64-bit")),
    "empty-leaf": (lambda t: dict(t, n=np.ones(0, np.int32)), mmsb.InvalidArgumentError, ("['n']", "no elements")),
}


@pytest.mark.parametrize("case", list(BAD_SAVES))
def test_bad_tree_is_refused_and_changes_nothing(tmp_path, case):
    make, error, needles = BAD_SAVES[case]
    state = mmsb.mmsb_start(tmp_path / "s")
    tree = {"w": np.ones((2, 3), np.float32), "n": np.int32(1)}
    mmsb.save_tree(state, "t", tree, step=5)
    before = (mmsb.state_digest(state), state.epoch, mmsb.tree_steps(state, "t"), len(mmsb.query_log(state)))
    with pytest.raises(error) as ei:
        mmsb.save_tree(state, "t", make(tree), step=6)
    assert isinstance(ei.value, mmsb.MMSBError)
    for needle in needles:
        assert needle in str(ei.value), (needle, str(ei.value))
    assert (mmsb.state_digest(state), state.epoch, mmsb.tree_steps(state, "t"), len(mmsb.query_log(state))) == before
    mmsb.save_tree(state, "t", tree, step=6)  # the state still works
    mmsb.mmsb_stop(state)


def test_bad_names_steps_and_tracers(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    tree = {"w": np.ones(2, np.float32)}
    mmsb.save_tree(state, "t", tree, step=4)
    digest = mmsb.state_digest(state)
    for bad_step in (4, 3, 2.0, True, "5"):
        with pytest.raises(mmsb.InvalidArgumentError, match="step"):
            mmsb.save_tree(state, "t", tree, step=bad_step)
    with pytest.raises(mmsb.InvalidArgumentError, match="'nope'"):
        mmsb.load_tree(state, "nope")
    with pytest.raises(mmsb.InvalidArgumentError, match="'nope'"):
        mmsb.tree_steps(state, "nope")
    with pytest.raises(mmsb.InvalidArgumentError, match="no step 5"):
        mmsb.load_tree(state, "t", step=5)
    with pytest.raises(mmsb.InvalidArgumentError, match="name"):
        mmsb.save_tree(state, "", tree)
    with pytest.raises(mmsb.InvalidArgumentError, match="traced"):
        jax.jit(lambda x: mmsb.save_tree(state, "t", {"w": x}, step=9))(jnp.ones(2))
    with pytest.raises(mmsb.InvalidArgumentError, match=r"leaf \['w'\] of the journaled tree 't'"):
        mmsb.delete_page(state, int(state._trees["t"].page_ids[0]))
    assert mmsb.state_digest(state) == digest
    assert mmsb.save_tree(state, "t", tree) == state.epoch and mmsb.tree_steps(state, "t")[-1][0] == 5
    mmsb.mmsb_stop(state)


@settings(max_examples=8)
@given(n=st.integers(2, 10), nan_at=st.one_of(st.none(), st.integers(0, 9)), seed=st.integers(0, 99))
def test_find_step_agrees_with_a_linear_scan(tmp_path_factory, n, nan_at, seed):
    rng = np.random.default_rng(seed)
    state = mmsb.mmsb_start(tmp_path_factory.mktemp("f") / "s")
    w = rng.standard_normal((4, 3)).astype(np.float32)
    calls = []

    def nonfinite(tree):
        calls.append(1)
        return mmsb.shell.any_nonfinite(tree)

    for s in range(n):
        w = w + 1.0
        if nan_at is not None and s >= nan_at:
            w[rng.integers(0, 4), rng.integers(0, 3)] = np.nan  # it stays once it entered
        mmsb.save_tree(state, "train", {"w": w.copy(), "step": np.int32(s)}, step=10 + s)
        if s == n // 2:
            mmsb.checkpoint(state)
    scan = next((10 + s for s in range(n) if mmsb.shell.any_nonfinite(mmsb.load_tree(state, "train", step=10 + s))),
                None)
    assert scan == (None if nan_at is None or nan_at >= n else 10 + nan_at)
    assert mmsb.find_step(state, "train", nonfinite) == scan
    assert len(calls) <= 1 + int(np.ceil(np.log2(n))) + 1  # bisection, not a scan
    mmsb.mmsb_stop(state)


def test_tree_diff_counts_bitwise_changes(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    a = np.array([1.0, np.nan, 0.0, 4.0], np.float32)
    b = np.array([1.0, np.nan, -0.0, 1.0], np.float32)
    mmsb.save_tree(state, "t", {"x": a, "k": np.int32(7), "m": np.array([True, False])}, step=0)
    mmsb.save_tree(state, "t", {"x": b, "k": np.int32(2), "m": np.array([True, True])}, step=1)
    d = mmsb.tree_diff(state, "t", 0, 1)
    assert d["['x']"] == {"shape": (4,), "dtype": "float32", "changed": 2, "max_abs": 3.0, "norm": 3.0}
    assert d["['k']"]["changed"] == 1 and d["['k']"]["max_abs"] == 5.0
    assert d["['m']"]["changed"] == 1 and d["['m']"]["max_abs"] == 1.0
    assert all(v["changed"] == 0 for v in mmsb.tree_diff(state, "t", 1, 1).values())
    mmsb.mmsb_stop(state)


def test_replay_to_epoch_snapshots_serve_load_tree(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    epochs = [mmsb.save_tree(state, "t", {"v": np.full(3, s, np.int32)}, step=s) for s in range(5)]
    other = mmsb.create_page(state, size=2)  # epochs of other operations in between
    mmsb.update_page(state, other.id, [1, 2])
    snap = mmsb.replay_to_epoch(state, epochs[2])
    assert mmsb.tree_steps(snap, "t") == [(s, epochs[s]) for s in range(3)]
    assert mmsb.load_tree(snap, "t")["v"].tolist() == [2, 2, 2]
    assert mmsb.load_tree(snap, "t", step=0)["v"].tolist() == [0, 0, 0]
    with pytest.raises(mmsb.InvalidArgumentError, match="no step 3"):
        mmsb.load_tree(snap, "t", step=3)
    with pytest.raises(mmsb.ReadOnlyError):
        mmsb.save_tree(snap, "t", {"v": np.zeros(3, np.int32)})
    mmsb.mmsb_stop(state)


def test_checkpoint_plus_tail_equals_full_replay_with_trees(tmp_path):
    path = str(tmp_path / "s")
    state = mmsb.mmsb_start(path)
    rng = np.random.default_rng(0)
    emb = np.zeros((50, 4), np.float32)
    for s in range(8):
        emb[rng.integers(0, 50, 3)] = rng.standard_normal((3, 4))
        mmsb.save_tree(state, "emb", {"table": emb.copy(), "n": np.int32(s)})
        mmsb.save_tree(state, "other", {"x": np.full(2, s, np.uint8)}, step=2 * s)
        if s in (2, 5):
            mmsb.checkpoint(state)
    digest = mmsb.state_digest(state)
    mmsb.mmsb_stop(state)
    assert full_replay_digest(path) == digest
    reopened = mmsb.mmsb_open(path)
    assert mmsb.state_digest(reopened) == digest
    assert [s for s, _ in mmsb.tree_steps(reopened, "other")] == list(range(0, 16, 2))
    mmsb.save_tree(reopened, "emb", {"table": emb, "n": np.int32(8)})  # continues after a reopen
    assert mmsb.tree_steps(reopened, "emb")[-1] == (8, reopened.epoch)
    mmsb.mmsb_stop(reopened)


def test_fsync_always_is_durable_when_save_tree_returns(tmp_path):
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path, fsync="always")
    epoch = mmsb.save_tree(state, "t", {"w": np.arange(5000, dtype=np.float32)})
    on_disk = mmsb.log.read_records(path / "log")  # the files alone, without flushing the state
    assert [r.kind.name for r in on_disk.records if r.epoch == epoch][-1] == "TREE_STEP"
    mmsb.mmsb_stop(state)


def test_background_failure_is_raised_never_swallowed(tmp_path, monkeypatch):
    from mmsb_jax.log import TLog

    state = mmsb.mmsb_start(tmp_path / "s")
    mmsb.save_tree(state, "t", {"w": np.zeros(4, np.float32)})
    state.wait_for_checkpoints()

    def broken(self, batches):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(TLog, "commit_batches", broken)
    mmsb.save_tree(state, "t", {"w": np.ones(4, np.float32)})  # accepted; the writer fails later
    with pytest.raises(mmsb.SerializationError, match="disk full"):
        mmsb.create_page(state, size=4)
    with pytest.raises(mmsb.SerializationError, match="disk full"):
        mmsb.save_tree(state, "t", {"w": np.ones(4, np.float32)})
    monkeypatch.undo()
    with pytest.raises(mmsb.SerializationError, match="disk full"):
        state.close()


@pytest.mark.parametrize("fsync", ["batch", "always"])
def test_step_none_past_int64_is_refused_and_nothing_changes(tmp_path, fsync):
    """After step 2**63-1, ``step=None`` (last + 1) is no int64: refused up front, the state
    and the store unchanged (it used to fail in the writer and leave the store unopenable)."""
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path, fsync=fsync)
    for i in range(3):
        mmsb.save_tree(state, "good", {"x": np.full(2, float(i), np.float32)}, step=i)
    last = mmsb.save_tree(state, "a", {"x": np.zeros(2, np.float32)}, step=2**63 - 1)
    digest = mmsb.state_digest(state)
    with pytest.raises(mmsb.InvalidArgumentError, match=r"step=None.*9223372036854775808.*int64"):
        mmsb.save_tree(state, "a", {"x": np.ones(2, np.float32)})
    assert state.epoch == last and mmsb.state_digest(state) == digest
    assert mmsb.tree_steps(state, "a") == [(2**63 - 1, last)]
    mmsb.save_tree(state, "good", {"x": np.full(2, 7.0, np.float32)})  # still usable
    mmsb.mmsb_stop(state)
    state = mmsb.mmsb_open(path)
    assert [s for s, _ in mmsb.tree_steps(state, "good")] == [0, 1, 2, 3]
    assert mmsb.load_tree(state, "a")["x"].tolist() == [0.0, 0.0]
    mmsb.mmsb_stop(state)


def test_a_step_failing_in_the_writer_keeps_the_steps_before_it(tmp_path, monkeypatch):
    """A step the background writer cannot journal poisons the state (every call raises),
    but the acknowledged steps before it stay logged and the store reopens at them."""
    from mmsb_jax.shell import _tree_jobs as _trees

    real = _trees.plan_leaf

    def failing(prev, new, scratch=None):
        if np.asarray(new).reshape(-1)[0] == 666:
            raise ValueError("cannot plan (injected)")
        return real(prev, new, scratch)

    path = tmp_path / "s"
    state = mmsb.mmsb_start(path)
    monkeypatch.setattr(_trees, "plan_leaf", failing)
    state._lock.writer = None  # (a fresh writer: the steps below queue together)
    for i in range(5):
        mmsb.save_tree(state, "t", {"x": np.full(3, float(i), np.float32)}, step=i)
    mmsb.save_tree(state, "t", {"x": np.full(3, 666.0, np.float32)}, step=5)  # accepted; fails later
    with pytest.raises(mmsb.SerializationError, match="injected"):
        mmsb.mmsb_stop(state)
    monkeypatch.undo()
    state = mmsb.mmsb_open(path)  # opens: what the log holds is what the stop recorded
    assert [s for s, _ in mmsb.tree_steps(state, "t")] == [0, 1, 2, 3, 4]
    assert mmsb.load_tree(state, "t")["x"].tolist() == [4.0, 4.0, 4.0]
    mmsb.mmsb_stop(state)


def test_scalar_pages_everywhere(tmp_path):
    path = str(tmp_path / "s")
    state = mmsb.mmsb_start(path)
    p = mmsb.create_page(state, shape=(), dtype=jnp.float32)
    q = mmsb.create_page(state, shape=(), dtype=jnp.float32)
    assert p.shape == () and p.size == 1 and mmsb.query_page(state, p.id).shape == ()
    mmsb.update_page(state, p.id, jnp.float32(2.5))
    mmsb.route_delta(state, q.id, mmsb.sparse_delta([0], jnp.array([1.5], jnp.float32), ()))
    mmsb.add_dependency(state, p.id, q.id)
    assert float(mmsb.query_page(state, q.id)) == 4.0
    mmsb.checkpoint(state)
    mmsb.route_delta(state, p.id, mmsb.dense_delta(jnp.array(True), jnp.float32(-0.0)))
    digest = mmsb.state_digest(state)
    mmsb.mmsb_stop(state)
    assert full_replay_digest(path) == digest
    reopened = mmsb.mmsb_open(path)
    assert mmsb.state_digest(reopened) == digest
    assert bits_equal(mmsb.query_page(reopened, p.id), np.float32(-0.0))
    mmsb.mmsb_stop(reopened)


def test_rows_records_replay_on_any_page(tmp_path):
    """ROWS is general: any page, any row length dividing it; impossible ones end replay."""
    path = str(tmp_path / "s")
    state = mmsb.mmsb_start(path)
    page = mmsb.create_page(state, shape=(4, 6), dtype=jnp.int32)
    state.wait_for_checkpoints()
    log = state._log
    log.log_rows(2, page.id, 3, np.array([1, 7, 1], np.int32), np.arange(9, dtype=np.int32))  # row 1 twice: last wins
    log.log_rows(3, page.id, 24, np.array([0], np.int32), np.full(24, 5, np.int32))
    log.log_rows(4, page.id, 2, np.array([11], np.int32), np.array([8, 9], np.int32))
    mmsb.mmsb_stop(state)
    want = np.full(24, 5, np.int32)
    want[22:24] = [8, 9]
    reopened = mmsb.mmsb_open(path)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(reopened, page.id)).reshape(-1), want)
    snap = mmsb.replay_to_epoch(reopened, 2)
    first = np.zeros(24, np.int32)
    first[3:6], first[21:24] = [6, 7, 8], [3, 4, 5]
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, page.id)).reshape(-1), first)
    reopened._log.log_rows(5, page.id, 5, np.array([0], np.int32), np.zeros(5, np.int32))  # 5 does not divide 24
    mmsb.mmsb_stop(reopened)
    with pytest.raises(mmsb.MMSBError, match="row_len=5"):
        mmsb.mmsb_open(path)


def test_load_tree_from_a_path_after_stop(tmp_path):
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path)
    mmsb.save_tree(state, "t", {"w": np.ones(3, np.float32)}, step=7)
    mmsb.mmsb_stop(state)
    snap = mmsb.replay_to_epoch(path, None)
    assert mmsb.load_tree(snap, "t", step=7)["w"].tolist() == [1.0, 1.0, 1.0]
    assert os.path.isdir(path / "log")


def test_flush_makes_queued_steps_survive_a_kill(tmp_path):
    """Under fsync="batch" save_tree returns before its step is in the log; state.flush()
    makes every step so far durable: after a SIGKILL every flushed step reopens."""
    from helpers import run_and_kill

    code = (
        "import sys, numpy as np, mmsb_jax as mmsb\n"
        "s = mmsb.mmsb_start(sys.argv[1])\n"
        "for k in range(10**6):\n"
        "    mmsb.save_tree(s, 't', {'w': np.full(4096, k, np.float32)}, step=k)\n"
        "    if k % 5 == 4:\n"
        "        s.flush(); print('ACK', k, flush=True)\n"
    )
    path = str(tmp_path / "s")
    lines = run_and_kill(code, [path], delay=0.3)
    acked = [int(ln.split()[1]) for ln in lines if ln.startswith("ACK")]
    assert acked
    state = mmsb.mmsb_open(path)
    steps = [s for s, _ in mmsb.tree_steps(state, "t")]
    assert steps[: acked[-1] + 1] == list(range(acked[-1] + 1))
    assert mmsb.load_tree(state, "t", step=acked[-1])["w"][0] == acked[-1]
    state.close()


def test_unflattenable_trees_and_bad_devices_are_mmsb_errors():
    state = mmsb.mmsb_start()
    with pytest.raises(mmsb.InvalidArgumentError, match="flattened"):
        mmsb.save_tree(state, "t", {1: np.zeros(2, np.float32), "a": np.zeros(2, np.float32)})
    with pytest.raises(mmsb.InvalidArgumentError, match="device=3"):
        mmsb.tree_ring(state, "r", {"w": np.zeros(3, np.float32)}, steps=2, device=3)
    assert state.epoch == 0
    state.close()


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Pair:
    p: jax.Array
    q: jax.Array


def test_a_dataclass_changed_since_is_rebuilt_as_a_dict_not_by_position(tmp_path, monkeypatch):
    """A class found by name whose fields were reordered or renamed since the tree was
    journaled would take the values by position, in the wrong fields: a dict of the
    journaled fields comes back instead. The unchanged class is rebuilt as itself."""
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path)
    mmsb.save_tree(state, "rd", _Pair(np.ones(2, np.float32), np.zeros(3, np.float32)))
    back = mmsb.load_tree(state, "rd")
    assert type(back) is _Pair and back.p.shape == (2,) and back.q.shape == (3,)
    mmsb.mmsb_stop(state)

    for fields in (("q", "p"), ("p", "r")):
        changed = jax.tree_util.register_dataclass(
            dataclasses.make_dataclass("_Pair", [(f, jax.Array) for f in fields]))
        changed.__module__, changed.__qualname__ = __name__, "_Pair"
        monkeypatch.setitem(globals(), "_Pair", changed)
        state = mmsb.mmsb_open(path)
        back = mmsb.load_tree(state, "rd")
        mmsb.mmsb_stop(state)
        assert type(back) is dict and back["p"].tolist() == [1.0, 1.0] and back["q"].tolist() == [0.0] * 3


def test_a_deleted_leaf_is_refused_by_path_and_nothing_changes(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "s")
    mmsb.save_tree(state, "t", {"a": jnp.zeros(3), "b": jnp.ones(2)})
    gone = jnp.full(2, 5.0)
    gone.delete()
    epoch = state.epoch
    with pytest.raises(mmsb.InvalidArgumentError, match=r"leaf \['b'\] cannot be read"):
        mmsb.save_tree(state, "t", {"a": jnp.zeros(3), "b": gone})
    assert state.epoch == epoch and len(mmsb.tree_steps(state, "t")) == 1
    mmsb.mmsb_stop(state)


@pytest.mark.parametrize("sharded", [False, True], ids=["one device", "8 devices"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int8])
def test_many_rows_of_a_page_are_written_on_the_device(tmp_path, monkeypatch, dtype, sharded):
    """Row writes covering >= 1/8 of a page (a step changing many rows; a replayed tail of
    many steps merged) go through one on-device row write instead of taking the page to the
    host and back: the same bits as a plain copy at every step, live, reopened, replayed,
    with repeated rows (last writer wins) and bfloat16 NaN payloads."""
    from jax.sharding import Mesh

    from mmsb_jax.shell import _tree_writes

    calls = []
    real = _tree_writes._resolved_rows
    monkeypatch.setattr(_tree_writes, "_resolved_rows", lambda w: calls.append(len(w)) or real(w))
    mesh = Mesh(np.array(jax.devices()), ("pages",)) if sharded else None
    path = str(tmp_path / "s")
    state = mmsb.mmsb_start(path, mesh=mesh)
    rng = np.random.default_rng(1)
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")
    table = rng.integers(0, 2**8, (64, 5)).astype(bits).view(dtype)
    if dtype == ml_dtypes.bfloat16:
        table.view(np.uint16)[3, 1] = 0x7FC1  # a NaN payload XLA:CPU's bfloat16 scatter would quiet
    kept = []
    for s in range(12):
        rows = rng.choice(64, 24 if s % 3 == 0 else 3, replace=False)  # 24 rows: >= 1/8 live
        table[rows] = rng.integers(0, 2**8, (rows.size, 5)).astype(bits).view(dtype)
        if dtype == ml_dtypes.bfloat16 and s == 5:
            table.view(np.uint16)[rows[0], 0] = 0x7F81  # a signalling NaN payload
        mmsb.save_tree(state, "t", {"table": table.copy()}, step=s)
        kept.append(table.copy())
        if s == 1:
            mmsb.checkpoint(state)  # the tail after it: 10 steps, merged in replay
    for s, want in enumerate(kept):
        assert bits_equal(mmsb.load_tree(state, "t", step=s)["table"], want), s
    live_calls = len(calls)
    assert live_calls >= 1  # the steps of 24 rows
    digest = mmsb.state_digest(state)
    mmsb.mmsb_stop(state)
    reopened = mmsb.mmsb_open(path, mesh=mesh)
    assert len(calls) > live_calls and max(calls) > 1  # the replayed tail: many steps, one write
    assert mmsb.state_digest(reopened) == digest
    assert bits_equal(mmsb.load_tree(reopened, "t")["table"], kept[-1])
    for s in (0, 4, 7, 11):
        assert bits_equal(mmsb.load_tree(mmsb.replay_to_epoch(path, dict(mmsb.tree_steps(reopened, "t"))[s]),
                                         "t")["table"], kept[s]), s
    reopened.close()
