"""Replay against a numpy model: random operation sequences, replay_to_epoch at every epoch,
stop/reopen (checkpoint + tail vs. the log alone), plus diff and query_log filters
and observers."""

from __future__ import annotations

import os
import shutil
import tempfile

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis import given

import mmsb_jax as mmsb
from mmsb_jax import (
    GraphCycleError,
    InvalidArgumentError,
    PageNotFoundError,
    ReadOnlyError,
    SerializationError,
)

F32 = np.float32
SHAPE = (4,)
MAX_IDS = 14  # stay inside one pool capacity (16 slots); growth has its own test below
MAX_EDGES = 6  # keeps REAL path sums small enough to stay exact in float32
WEIGHTS = {"real": (None, 2.0, -1.0, 0.5), "tropical": (None, 1.0, 2.0, -1.0)}


# --------------------------------------------------------------------------- the model
class Model:
    """b (what was written) per page, edges in insertion order, x by a topological fixpoint."""

    def __init__(self, semiring: str):
        self.sr = semiring
        self.b: dict[int, np.ndarray] = {}
        self.pepoch: dict[int, int] = {}
        self.edges: dict[tuple[int, int], float | None] = {}
        self.next_id = 0
        self.epoch = 0
        self.snaps = {0: self.snapshot()}
        self.last_checkpoint = None

    def live(self) -> list[int]:
        return sorted(self.b)

    def pick(self, i: int) -> int | None:
        ids = self.live()
        return ids[i % len(ids)] if ids else None

    def topo(self) -> list[int]:
        indeg = {p: 0 for p in self.b}
        for (_, c) in self.edges:
            indeg[c] += 1
        ready = sorted(p for p, d in indeg.items() if d == 0)
        out = []
        while ready:
            u = ready.pop(0)
            out.append(u)
            for (p, c) in self.edges:
                if p == u:
                    indeg[c] -= 1
                    if indeg[c] == 0:
                        ready.append(c)
        assert len(out) == len(self.b), "model graph has a cycle"
        return out

    def visible(self) -> dict[int, np.ndarray]:
        x: dict[int, np.ndarray] = {}
        for v in self.topo():
            acc = self.b[v].astype(np.float64)
            for (p, c), w in self.edges.items():
                if c != v:
                    continue
                if self.sr == "real":
                    acc = acc + (1.0 if w is None else w) * x[p]
                else:
                    acc = np.minimum(acc, (0.0 if w is None else w) + x[p])
            x[v] = acc
        return x

    def reaches(self, src: int, dst: int) -> bool:
        seen, stack = {src}, [src]
        while stack:
            u = stack.pop()
            if u == dst:
                return True
            for (p, c) in self.edges:
                if p == u and c not in seen:
                    seen.add(c)
                    stack.append(c)
        return False

    def deps(self) -> list:
        return sorted((p, c, w, "data") for (p, c), w in self.edges.items())

    def snapshot(self):
        return {"x": self.visible(), "deps": self.deps(), "pepoch": dict(self.pepoch)}

    def commit(self):
        self.epoch += 1
        return self.epoch

    def record(self):
        self.snaps[self.epoch] = self.snapshot()

    # model mutations -----------------------------------------------------------------
    def create(self, n: int) -> list[int]:
        e = self.commit()
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        for pid in ids:
            self.b[pid] = np.zeros(SHAPE, F32)
            self.pepoch[pid] = e
        return ids

    def write(self, pid: int, new: np.ndarray):
        self.b[pid] = new.astype(F32)
        self.pepoch[pid] = self.epoch

    def delete(self, pid: int):
        self.commit()
        del self.b[pid]
        del self.pepoch[pid]
        self.edges = {k: w for k, w in self.edges.items() if pid not in k}


def dense_apply(b, mask, vals):
    return np.where(np.asarray(mask), np.asarray(vals, F32), b)


def sparse_apply(b, idx, vals):
    out = b.copy()
    for i, v in zip(idx, vals):
        out[i] = v
    return out


def acc_apply(b, payload, sr):
    payload = np.asarray(payload, F32)
    return (b + payload) if sr == "real" else np.minimum(b, payload)


def make_delta(kind, data):
    if kind == "dense":
        mask, vals = data
        return mmsb.dense_delta(jnp.asarray(np.array(mask, bool)), jnp.asarray(np.array(vals, F32)))
    if kind == "sparse":
        idx, vals = data
        return mmsb.sparse_delta(np.array(idx, np.int32), jnp.asarray(np.array(vals, F32)), SHAPE)
    payload, sr = data
    return mmsb.accumulate_delta(jnp.asarray(np.array(payload, F32)), sr)


def writes_something(kind, data) -> bool:
    """The model's no-op rule: a delta that writes no element takes no epoch."""
    return kind == "accumulate" or bool(np.any(data[0]) if kind == "dense" else len(data[0]))


def model_apply(b, kind, data):
    if kind == "dense":
        return dense_apply(b, *data)
    if kind == "sparse":
        return sparse_apply(b, *data)
    return acc_apply(b, *data)


# --------------------------------------------------------------------------- strategies
ints = st.integers(-8, 8)
vec = st.lists(ints, min_size=4, max_size=4)
mask = st.lists(st.booleans(), min_size=4, max_size=4)
sp_idx_vals = st.integers(1, 3).flatmap(
    lambda k: st.tuples(st.lists(st.integers(0, 3), min_size=k, max_size=k), st.lists(ints, min_size=k, max_size=k))
)
pick = st.integers(0, 50)
delta_spec = st.one_of(
    st.tuples(st.just("dense"), st.tuples(mask, vec)),
    st.tuples(st.just("sparse"), sp_idx_vals),
    st.tuples(st.just("acc"), st.tuples(vec, st.sampled_from(["real", "tropical"]))),
)
ops = st.one_of(
    st.tuples(st.just("create")),
    st.tuples(st.just("create_pages"), st.integers(1, 3)),
    st.tuples(st.just("update"), pick, vec),
    st.tuples(st.just("noop_update"), pick),
    st.tuples(st.just("route"), pick, delta_spec),
    st.tuples(
        st.just("sparse_batch"),
        st.lists(st.tuples(pick, st.lists(st.integers(0, 3), min_size=2, max_size=2), st.lists(ints, min_size=2, max_size=2)),
                 min_size=1, max_size=3),
    ),
    st.tuples(st.just("batch"), st.lists(st.tuples(pick, delta_spec), min_size=1, max_size=3)),
    st.tuples(st.just("delete"), pick),
    st.tuples(st.just("add_dep"), pick, pick, st.integers(0, 3)),
    st.tuples(st.just("add_dep"), pick, pick, st.integers(0, 3)),  # twice: edges matter
    st.tuples(st.just("rm_dep"), pick),
    st.tuples(st.just("checkpoint")),
)


# --------------------------------------------------------------------------- checks
def assert_matches(state, model: Model, snap=None, where=""):
    snap = snap or model.snapshot()
    ids = sorted(snap["x"])
    assert state.page_ids().tolist() == ids, where
    for pid in ids:
        got = np.asarray(mmsb.query_page(state, pid))
        assert got.dtype == F32
        np.testing.assert_array_equal(got.astype(np.float64), snap["x"][pid], err_msg=f"{where} page {pid}")
        assert state.page_epoch(pid) == snap["pepoch"][pid], f"{where} page {pid} epoch"
    assert state.dependencies() == snap["deps"], where


def apply_op(state, model: Model, op):
    """Run ``op`` on the state and the model; returns a label of what ran."""
    kind = op[0]
    if kind in ("create", "create_pages"):
        n = 1 if kind == "create" else op[1]
        if model.next_id + n > MAX_IDS:
            return "skip"
        if kind == "create":
            page = mmsb.create_page(state, size=4, dtype=jnp.float32)
            got = [page.id]
        else:
            got = mmsb.create_pages(state, n, shape=SHAPE, dtype=np.float32).tolist()
        assert got == model.create(n)
        return kind
    if kind == "checkpoint":
        if model.last_checkpoint == model.epoch:
            return "skip"  # a second checkpoint at one epoch: see test_checkpoint_twice_same_epoch
        d = mmsb.checkpoint(state)
        assert os.path.isfile(os.path.join(d, "manifest.json"))
        model.last_checkpoint = model.epoch
        return kind
    if not model.b:
        return "skip"
    if kind == "update":
        pid, new = model.pick(op[1]), np.array(op[2], F32)
        e = mmsb.update_page(state, pid, new)
        if np.array_equal(model.b[pid].view(np.uint32), new.view(np.uint32)):
            assert e is None
        else:
            assert e == model.commit()
            model.write(pid, new)
        return kind
    if kind == "noop_update":
        pid = model.pick(op[1])
        before = state.epoch
        assert mmsb.update_page(state, pid, model.b[pid].copy()) is None
        assert state.epoch == before
        return kind
    if kind == "route":
        pid, (dk, data) = model.pick(op[1]), op[2]
        e = mmsb.route_delta(state, pid, make_delta(dk, data))
        if not writes_something(dk, data):  # e.g. an all-false mask: no epoch
            assert e is None
            return kind
        assert e == model.commit()
        model.write(pid, model_apply(model.b[pid], dk, data))
        return kind
    if kind == "sparse_batch":
        rows = op[1]
        pids = np.array([model.pick(r[0]) for r in rows], np.int64)
        idx = np.array([r[1] for r in rows], np.int32)
        vals = np.array([r[2] for r in rows], F32)
        e = mmsb.route_sparse_batch(state, pids, idx, vals)
        assert e == model.commit()
        for pid, i, v in zip(pids.tolist(), idx, vals):
            model.write(pid, sparse_apply(model.b[pid], i, v))
        return kind
    if kind == "batch":
        entries = [(model.pick(p), dk, data) for p, (dk, data) in op[1]]
        e = mmsb.batch_route_deltas(state, [(pid, make_delta(dk, data)) for pid, dk, data in entries])
        entries = [(pid, dk, data) for pid, dk, data in entries if writes_something(dk, data)]
        if not entries:
            assert e is None
            return kind
        assert e == model.commit()
        for pid, dk, data in entries:
            model.write(pid, model_apply(model.b[pid], dk, data))
        return kind
    if kind == "delete":
        pid = model.pick(op[1])
        assert mmsb.delete_page(state, pid) is None
        model.delete(pid)
        with pytest.raises(PageNotFoundError):
            mmsb.query_page(state, pid)
        return kind
    if kind == "add_dep":
        p, c, w = model.pick(op[1]), model.pick(op[2]), WEIGHTS[model.sr][op[3]]
        if (p, c) not in model.edges and len(model.edges) >= MAX_EDGES:
            return "skip"
        if p == c or model.reaches(c, p):
            digest, epoch = mmsb.state_digest(state), state.epoch
            with pytest.raises(GraphCycleError) as ei:
                mmsb.add_dependency(state, p, c, weight=w)
            cyc = ei.value.cycle
            assert cyc[0] == cyc[-1] and p in cyc and c in cyc, cyc
            assert mmsb.state_digest(state) == digest and state.epoch == epoch
            assert_matches(state, model, where="after a refused cycle")
            return "cycle"
        e = mmsb.add_dependency(state, p, c, weight=w)
        assert e == model.commit()
        model.edges[(p, c)] = w
        return kind
    if kind == "rm_dep":
        if not model.edges:
            return "skip"
        p, c = list(model.edges)[op[1] % len(model.edges)]
        e = mmsb.remove_dependency(state, p, c)
        assert e == model.commit()
        del model.edges[(p, c)]
        return kind
    raise AssertionError(kind)


def run_sequence(semiring: str, sequence):
    root = tempfile.mkdtemp(prefix="mmsb-prop-")
    path = os.path.join(root, "state")
    state = s2 = s3 = None
    try:
        state = mmsb.mmsb_start(path, semiring=semiring, fsync="never")
        model = Model(semiring)
        for i, op in enumerate([("create_pages", 3), *sequence]):
            label = apply_op(state, model, op)
            assert state.epoch == model.epoch, (i, op)
            if label != "skip":
                model.record()
                assert_matches(state, model, where=f"after op {i} {op}")
        # (b) every epoch replays to the model's snapshot
        for e in range(model.epoch + 1):
            snap = mmsb.replay_to_epoch(state, e)
            assert snap.epoch == e
            assert_matches(snap, model, model.snaps[e], where=f"replay_to_epoch({e})")
        # (c) stop / reopen: checkpoint + tail, then the log alone
        digest = mmsb.state_digest(state)
        mmsb.mmsb_stop(state)
        state = None
        s2 = mmsb.mmsb_open(path)
        assert s2.semiring.name == semiring
        assert s2.epoch == model.epoch
        assert mmsb.state_digest(s2) == digest
        assert_matches(s2, model, where="reopened")
        s2.close()
        s2 = None
        shutil.rmtree(os.path.join(path, "checkpoints"), ignore_errors=True)
        s3 = mmsb.mmsb_open(path)
        assert s3.semiring.name == semiring, "the log alone must say which semiring the state uses"
        assert mmsb.state_digest(s3) == digest
        assert_matches(s3, model, where="reopened from the log alone")
        # (d) the reopened state keeps working; epochs continue
        live_before = model.live()
        more = [("create",), ("update", 0, [1, 2, 3, 4]), ("route", 1, ("acc", ([1, 1, 1, 1], "real")))]
        if live_before:
            more.append(("add_dep", len(model.live()) - 1, 0, 0))
        for op in more:
            if apply_op(s3, model, op) != "skip":
                model.record()
            assert s3.epoch == model.epoch
        assert_matches(s3, model, where="after reopen + new ops")
        d3 = mmsb.state_digest(s3)
        mmsb.mmsb_stop(s3)
        s3 = None
        s3 = mmsb.mmsb_open(path)
        assert mmsb.state_digest(s3) == d3
        assert_matches(s3, model, where="second reopen")
        last = mmsb.replay_to_epoch(s3, model.epoch)
        assert_matches(last, model, model.snaps[model.epoch], where="replay after second reopen")
    finally:
        for s in (state, s2, s3):
            if s is not None:
                s.close()
        shutil.rmtree(root, ignore_errors=True)


# No shrinking: a failing run stays fast (the failing sequence is printed unshrunk).
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@settings(max_examples=25, phases=NO_SHRINK)
@given(st.lists(ops, min_size=1, max_size=14))
def test_random_sequences_real(sequence):
    run_sequence("real", sequence)


@settings(max_examples=15, phases=NO_SHRINK)
@given(st.lists(ops, min_size=1, max_size=14))
def test_random_sequences_tropical(sequence):
    run_sequence("tropical", sequence)


def test_fixed_sequence_every_op_kind():
    """One deterministic sequence that surely hits every operation (hypothesis may not)."""
    seq = [
        ("create_pages", 3), ("create",), ("update", 0, [1, 2, 3, 4]), ("add_dep", 0, 1, 1),
        ("add_dep", 1, 2, 0), ("add_dep", 2, 0, 0),  # cycle 0->1->2->0: refused
        ("add_dep", 1, 1, 0),  # self-loop: refused
        ("checkpoint",), ("route", 0, ("sparse", ([0, 0, 3], [5, 6, 7]))),
        ("route", 1, ("acc", ([1, -1, 2, 0], "real"))), ("route", 2, ("dense", ([True, False, True, False], [3, 3, 3, 3]))),
        ("sparse_batch", [(0, [1, 1], [2, 3]), (3, [0, 2], [4, 4]), (0, [1, 2], [8, 8])]),
        ("batch", [(0, ("dense", ([True] * 4, [0, 0, 1, 1]))), (1, ("sparse", ([2], [7]))), (0, ("acc", ([1] * 4, "real")))]),
        ("add_dep", 0, 1, 2),  # re-weight an existing edge
        ("noop_update", 1), ("checkpoint",), ("rm_dep", 0), ("delete", 1), ("create",),
        ("update", 4, [0, 0, 0, 0]), ("update", 4, [1, 0, 0, 0]), ("checkpoint",),
    ]
    run_sequence("real", seq)


# --------------------------------------------------------------------------- replay API
@pytest.fixture
def state(tmp_path):
    s = mmsb.mmsb_start(tmp_path / "state", fsync="never")
    yield s
    s.close()


def test_replay_to_epoch_bad_arguments_and_read_only(state):
    p = mmsb.create_page(state, size=4, dtype=jnp.float32)
    mmsb.update_page(state, p.id, np.ones(4, F32))
    with pytest.raises(InvalidArgumentError):
        mmsb.replay_to_epoch(state, -1)
    with pytest.raises(InvalidArgumentError):
        mmsb.replay_to_epoch(state, state.epoch + 1)
    snap = mmsb.replay_to_epoch(state, 1)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, p.id)), np.zeros(4, F32))
    digest = mmsb.state_digest(snap)
    for write in (
        lambda: mmsb.update_page(snap, p.id, np.full(4, 5, F32)),
        lambda: mmsb.create_page(snap, size=4, dtype=jnp.float32),
        lambda: mmsb.delete_page(snap, p.id),
    ):
        with pytest.raises(ReadOnlyError):
            write()
    assert mmsb.state_digest(snap) == digest
    # the snapshot never writes into the state's directory, and the live state is untouched
    assert state.epoch == 2
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, p.id)), np.ones(4, F32))


def test_replay_from_path_after_stop(tmp_path):
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    ids = mmsb.create_pages(s, 2, size=3, dtype=np.int32)
    mmsb.update_page(s, int(ids[0]), np.array([1, 2, 3], np.int32))
    mmsb.route_delta(s, int(ids[1]), mmsb.sparse_delta([2], np.array([9], np.int32), 3))
    digests = {e: mmsb.state_digest(mmsb.replay_to_epoch(s, e)) for e in range(4)}
    mmsb.mmsb_stop(s)
    for e in range(4):
        assert mmsb.state_digest(mmsb.replay_to_epoch(path, e)) == digests[e]
        assert mmsb.state_digest(mmsb.replay_to_epoch(str(path), e)) == digests[e]
    assert len(set(digests.values())) == 4


def test_replay_to_epoch_of_a_missing_path_raises(tmp_path):
    """Like mmsb_open, replaying a directory that holds no state must not invent an empty one."""
    with pytest.raises(SerializationError):
        mmsb.mmsb_open(tmp_path / "nothing-here")
    with pytest.raises(SerializationError):
        mmsb.replay_to_epoch(tmp_path / "nothing-here", 3)


def test_deltas_that_write_nothing_take_no_epoch(tmp_path):
    """A dense delta with an all-False mask or an empty sparse delta changes nothing: no epoch,
    no record, the page's epoch stays (as update_page with identical content)."""
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    a, b = (int(i) for i in mmsb.create_pages(s, 2, size=4, dtype=np.float32))  # 1
    nothing = mmsb.dense_delta(np.zeros(4, bool), np.ones(4, F32))
    empty = mmsb.sparse_delta(np.zeros(0, np.int32), np.zeros(0, F32), 4)
    assert mmsb.route_delta(s, a, nothing) is None and mmsb.route_delta(s, b, empty) is None
    assert mmsb.batch_route_deltas(s, [(a, nothing), (b, empty)]) is None
    assert mmsb.route_sparse_batch(s, [a, b], np.zeros((2, 0), np.int32), np.zeros((2, 0), F32)) is None
    assert mmsb.batch_route_deltas(s, [(b, nothing), (a, mmsb.accumulate_delta(np.ones(4, F32), "real"))]) == 2
    assert (s.epoch, s.page_epoch(a), s.page_epoch(b)) == (2, 2, 1)
    assert [r.kind.name for r in mmsb.query_log(s)] == ["CREATE_PAGES", "ACCUMULATE"]
    digest = mmsb.state_digest(s)
    mmsb.mmsb_stop(s)
    s = mmsb.mmsb_open(path)
    try:
        assert s.epoch == 2 and mmsb.state_digest(s) == digest
    finally:
        s.close()


def test_logged_deltas_that_write_nothing_replay_as_recorded(tmp_path):
    """Logs written before empty deltas became no-ops hold them with an epoch of their own:
    replay keeps that epoch and stamps the page, exactly as recorded."""
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    a, b = (int(i) for i in mmsb.create_pages(s, 2, size=4, dtype=np.float32))  # 1
    s._log.log_dense(2, a, np.zeros(4, bool), np.zeros(0, F32))  # as an older version logged them
    s._log.log_sparse(3, b, np.zeros(0, np.int32), np.zeros(0, F32))
    s._log.sync()
    s.close()
    s = mmsb.mmsb_open(path)
    try:
        assert (s.epoch, s.page_epoch(a), s.page_epoch(b)) == (3, 2, 3)
        assert mmsb.replay_to_epoch(s, 2).page_epoch(a) == 2
        assert mmsb.route_delta(s, a, mmsb.sparse_delta([0], np.ones(1, F32), 4)) == 4
    finally:
        s.close()


def test_checkpoint_twice_same_epoch(state):
    """Checkpointing an unchanged state (e.g. checkpoint, then compact_log) must work."""
    mmsb.create_page(state, size=4, dtype=jnp.float32)
    d1 = mmsb.checkpoint(state)
    assert os.path.isfile(os.path.join(d1, "manifest.json"))
    d2 = mmsb.checkpoint(state)
    assert os.path.isfile(os.path.join(d2, "manifest.json"))
    res = mmsb.compact_log(state)
    assert res["epoch"] == state.epoch


def test_checkpoint_plus_tail_is_bit_exact_with_inexact_floats(tmp_path):
    """Non-associative float sums: the reopened state must give the live values bit for bit
    (checkpoint + tail == full replay == live), whatever order the parents were added in."""
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    ids = [int(i) for i in mmsb.create_pages(s, 5, size=3, dtype=np.float32)]
    child = ids[4]
    for p in (3, 2, 1, 0):  # parents added in descending id order
        mmsb.add_dependency(s, ids[p], child)
    vals = [[1e8, 0.1, 1e-3], [1.0, 0.2, 3.0], [-1e8, 0.3, 7.0], [0.5, 1e7, -1e-3]]
    for p, v in enumerate(vals):
        mmsb.update_page(s, ids[p], np.array(v, F32))
    mmsb.checkpoint(s)
    mmsb.update_page(s, ids[0], np.array([1e8, 0.1, 2e-3], F32))
    live = np.asarray(mmsb.query_page(s, child)).view(np.uint32)
    digest = mmsb.state_digest(s)
    replayed = np.asarray(mmsb.query_page(mmsb.replay_to_epoch(s, s.epoch), child)).view(np.uint32)
    mmsb.mmsb_stop(s)
    s2 = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(s2) == digest
        reopened = np.asarray(mmsb.query_page(s2, child)).view(np.uint32)
    finally:
        s2.close()
    shutil.rmtree(path / "checkpoints")
    s3 = mmsb.mmsb_open(path)
    try:
        from_log = np.asarray(mmsb.query_page(s3, child)).view(np.uint32)
    finally:
        s3.close()
    np.testing.assert_array_equal(from_log, live, err_msg="full log replay vs live")
    np.testing.assert_array_equal(replayed, live, err_msg="replay_to_epoch (via checkpoint) vs live")
    np.testing.assert_array_equal(reopened, live, err_msg="checkpoint + tail vs live")


def test_parentless_page_reads_back_bit_exact_in_a_pool_with_edges(state):
    """"A page with no parents has x == b": also bit for bit (-0.0), also when some other
    page of its pool has a dependency."""
    a, b, c = (int(i) for i in mmsb.create_pages(state, 3, size=4, dtype=np.float32))
    data = np.array([-0.0, 1.0, -0.0, 2.0], F32)
    mmsb.update_page(state, c, data)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, c)).view(np.uint32), data.view(np.uint32))
    mmsb.add_dependency(state, a, b)  # an unrelated edge in c's pool
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, c)).view(np.uint32), data.view(np.uint32))
    data2 = np.array([3.0, -0.0, -0.0, -0.0], F32)
    mmsb.update_page(state, c, data2)  # a write while the pool has edges (incremental refresh)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, c)).view(np.uint32), data2.view(np.uint32))


def test_new_page_after_pool_growth_in_a_pool_with_edges(tmp_path):
    """A page created after its pool grew must read as zeros, not as another page's value."""
    s = mmsb.mmsb_start(tmp_path / "s", fsync="never")
    try:
        ids = [int(i) for i in mmsb.create_pages(s, 16, size=2, dtype=np.float32)]
        mmsb.add_dependency(s, ids[0], ids[1])
        mmsb.update_page(s, ids[15], np.array([7, 7], F32))
        mmsb.update_page(s, ids[0], np.array([1, 2], F32))
        p = mmsb.create_page(s, size=2, dtype=jnp.float32)  # slot 16: the pool grows
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, p.id)), np.zeros(2, F32))
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, ids[1])), np.array([1, 2], F32))
        mmsb.update_page(s, ids[0], np.array([3, 3], F32))
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, ids[1])), np.array([3, 3], F32))
        snap = mmsb.replay_to_epoch(s, s.epoch)
        for pid in s.page_ids().tolist():
            np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, pid)), np.asarray(mmsb.query_page(s, pid)))
    finally:
        s.close()


# --------------------------------------------------------------------------- diff
def test_diff_against_numpy(state):
    a = mmsb.create_page(state, size=4, dtype=jnp.float32).id  # 1
    b = mmsb.create_page(state, size=5, dtype=jnp.float32).id  # 2 (a pool without edges)
    c = mmsb.create_page(state, size=4, dtype=jnp.float32).id  # 3
    mmsb.add_dependency(state, a, c)  # 4
    mmsb.update_page(state, a, np.array([1, 0, 0, np.nan], F32))  # 5: c changes by propagation
    mmsb.update_page(state, b, np.array([0, -0.0, 2, 0, 0], F32))  # 6: -0.0 is a bitwise change
    d = mmsb.create_page(state, size=4, dtype=jnp.float32).id  # 7
    mmsb.delete_page(state, b)  # 8
    mmsb.update_page(state, a, np.array([1, 5, 0, np.nan], F32))  # 9: NaN stays, one element changes
    mmsb.route_delta(state, d, mmsb.sparse_delta([1], np.array([3], F32), 4))  # 10
    vis = {e: {pid: np.asarray(mmsb.query_page(mmsb.replay_to_epoch(state, e), pid))
               for pid in mmsb.replay_to_epoch(state, e).page_ids().tolist()} for e in range(11)}

    def expected(ea, eb):
        A, B = vis[ea], vis[eb]
        changed, nbytes = {}, 0
        for pid in sorted(set(A) & set(B)):
            ua, ub = A[pid].view(np.uint32), B[pid].view(np.uint32)  # bitwise, as documented
            n = int(np.count_nonzero(ua != ub))
            if n:
                changed[pid] = n
                nbytes += int(np.count_nonzero(ua.view(np.uint8) != ub.view(np.uint8)))
        return {"created": sorted(set(B) - set(A)), "deleted": sorted(set(A) - set(B)),
                "changed": changed, "changed_bytes": nbytes}

    for ea, eb in [(0, 10), (3, 5), (4, 5), (5, 6), (5, 9), (8, 9), (6, 8), (9, 10), (7, 7), (2, 10)]:
        assert mmsb.diff(state, ea, eb) == expected(ea, eb), (ea, eb)
    assert mmsb.diff(state, 4, 5)["changed"] == {a: 2, c: 2}
    assert mmsb.diff(state, 5, 6)["changed"] == {b: 2}
    assert mmsb.diff(state, 8, 9)["changed"] == {a: 1, c: 1}
    r = mmsb.diff(state, 6, 8)
    assert r["created"] == [d] and r["deleted"] == [b]
    with pytest.raises(InvalidArgumentError):
        mmsb.diff(state, 5, 4)


# --------------------------------------------------------------------------- history / query_log
def _build_history(state):
    a, b = (int(i) for i in mmsb.create_pages(state, 2, size=4, dtype=np.float32))  # 1
    c = mmsb.create_page(state, size=4, dtype=jnp.float32).id  # 2
    mmsb.update_page(state, a, np.ones(4, F32))  # 3 DENSE a
    mmsb.route_delta(state, b, mmsb.sparse_delta([1], np.array([2], F32), 4))  # 4 SPARSE b
    mmsb.batch_route_deltas(state, [(a, mmsb.dense_delta(np.array([1, 0, 0, 0], bool), np.full(4, 5, F32))),
                                    (c, mmsb.sparse_delta([0], np.array([1], F32), 4))])  # 5 DENSE a + SPARSE c
    mmsb.add_dependency(state, a, b)  # 6 ADD_DEP
    mmsb.route_sparse_batch(state, np.array([c, b]), np.array([[0], [3]]), np.array([[4], [4]], F32))  # 7 SPARSE_BATCH
    mmsb.route_delta(state, c, mmsb.accumulate_delta(np.ones(4, F32), "real"))  # 8 ACCUMULATE c
    mmsb.remove_dependency(state, a, b)  # 9 REMOVE_DEP
    mmsb.delete_page(state, b)  # 10 DELETE_PAGES
    return a, b, c


def _ek(records):
    return [(r.epoch, r.kind.name) for r in records]


def test_query_log_by_page_lists_exactly_the_records_touching_the_page(state):
    a, b, c = _build_history(state)
    assert _ek(mmsb.query_log(state, page_id=a)) == [
        (1, "CREATE_PAGES"), (3, "DENSE"), (5, "DENSE"), (6, "ADD_DEP"), (9, "REMOVE_DEP")]
    assert _ek(mmsb.query_log(state, page_id=b)) == [
        (1, "CREATE_PAGES"), (4, "SPARSE"), (6, "ADD_DEP"), (7, "SPARSE_BATCH"), (9, "REMOVE_DEP"), (10, "DELETE_PAGES")]
    assert _ek(mmsb.query_log(state, page_id=c)) == [
        (2, "CREATE_PAGES"), (5, "SPARSE"), (7, "SPARSE_BATCH"), (8, "ACCUMULATE")]
    assert mmsb.query_log(state, page_id=99) == []
    for pid in (a, b, c):
        assert _ek(mmsb.query_log(state, page_id=pid)) == _ek(mmsb.query_log(state, page_id=mmsb.Page(pid, (), None, '', None)))
    # the batch records are flagged as batched and the DENSE record carries a's change
    dense5 = [r for r in mmsb.query_log(state, page_id=a) if r.epoch == 5][0]
    assert dense5.batched
    np.testing.assert_array_equal(dense5.payload(), np.array([5, 0, 0, 0], F32))


def test_query_log_filters(state):
    a, b, c = _build_history(state)
    everything = mmsb.query_log(state)
    assert [r.epoch for r in everything] == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10]
    assert all(r.source == "user" for r in everything)
    assert all(r.timestamp > 1_600_000_000 * 10**9 for r in everything)
    assert _ek(mmsb.query_log(state, epochs=(4, 6))) == [(4, "SPARSE"), (5, "DENSE"), (5, "SPARSE"), (6, "ADD_DEP")]
    assert [r.epoch for r in mmsb.query_log(state, epochs=(9, None))] == [9, 10]
    assert [r.epoch for r in mmsb.query_log(state, epochs=(None, 2))] == [1, 2]
    assert mmsb.query_log(state, epochs=(11, 20)) == []
    assert _ek(mmsb.query_log(state, kinds="DENSE")) == [(3, "DENSE"), (5, "DENSE")]
    assert _ek(mmsb.query_log(state, kinds=["SPARSE", "SPARSE_BATCH"])) == [(4, "SPARSE"), (5, "SPARSE"), (7, "SPARSE_BATCH")]
    assert _ek(mmsb.query_log(state, kinds="COMMIT")) == [(5, "COMMIT")]
    assert _ek(mmsb.query_log(state, page_id=c, kinds="SPARSE_BATCH", epochs=(1, 7))) == [(7, "SPARSE_BATCH")]
    assert _ek(mmsb.query_log(state, page_id=a, epochs=(4, 8))) == [(5, "DENSE"), (6, "ADD_DEP")]
    assert mmsb.query_log(state, source="user", page_id=b, kinds="DELETE_PAGES")[0].epoch == 10
    assert mmsb.query_log(state, source="jit-ring") == []
    # returned arrays are copies: mutating them does not change what the log returns next time
    rec = mmsb.query_log(state, kinds="SPARSE_BATCH")[0]
    rec.values[...] = 99
    assert mmsb.query_log(state, kinds="SPARSE_BATCH")[0].values.tolist() == [[4.0], [4.0]]


# --------------------------------------------------------------------------- observers
class Recorder:
    def __init__(self, state=None, pid=None):
        self.calls = []
        self.state, self.pid = state, pid
        self.seen = []

    def __call__(self, pid, epoch):
        self.calls.append((pid, epoch))
        if self.state is not None:
            assert self.state.epoch == epoch
            self.seen.append(np.asarray(mmsb.query_page(self.state, self.pid)).tolist())


def test_observer_direct_writes(state):
    p, q = (mmsb.create_page(state, size=4, dtype=jnp.float32).id for _ in range(2))
    rec = Recorder(state, p)
    state.observe(p, rec)
    e = mmsb.update_page(state, p, np.ones(4, F32))
    assert rec.calls == [(p, e)] and rec.seen == [[1.0] * 4]
    assert mmsb.update_page(state, p, np.ones(4, F32)) is None  # no-op: no epoch, no call
    mmsb.update_page(state, q, np.ones(4, F32))  # another page
    e2 = mmsb.batch_route_deltas(state, [(p, mmsb.sparse_delta([0], np.array([2], F32), 4)),
                                         (p, mmsb.sparse_delta([1], np.array([3], F32), 4))])
    e3 = mmsb.route_sparse_batch(state, np.array([q, p]), np.array([[0], [2]]), np.array([[7], [7]], F32))
    assert rec.calls == [(p, e), (p, e2), (p, e3)]
    state.unobserve(p, rec)
    mmsb.update_page(state, p, np.zeros(4, F32))
    assert len(rec.calls) == 3
    with pytest.raises(PageNotFoundError):
        state.observe(123, rec)
    with pytest.raises(InvalidArgumentError):
        state.observe(p, "not callable")


def test_observer_not_called_when_a_write_leaves_the_value_unchanged(state):
    p = mmsb.create_page(state, size=4, dtype=jnp.float32).id
    rec = Recorder()
    state.observe(p, rec)
    mmsb.route_delta(state, p, mmsb.sparse_delta([0], np.zeros(1, F32), 4))  # writes the value it holds
    mmsb.route_delta(state, p, mmsb.accumulate_delta(np.zeros(4, F32), "real"))  # x + 0
    assert rec.calls == []


def test_observer_through_propagation(state):
    a, b, c, d = (mmsb.create_page(state, size=4, dtype=jnp.float32).id for _ in range(4))
    mmsb.add_dependency(state, a, b, weight=2.0)
    mmsb.add_dependency(state, b, c)
    mmsb.add_dependency(state, b, d, weight=0.0)  # d never sees b's value
    recs = {pid: Recorder(state, pid) for pid in (a, b, c, d)}
    for pid, r in recs.items():
        state.observe(pid, r)
    e = mmsb.update_page(state, a, np.ones(4, F32))
    assert recs[a].calls == [(a, e)]
    assert recs[b].calls == [(b, e)] and recs[b].seen == [[2.0] * 4]
    assert recs[c].calls == [(c, e)] and recs[c].seen == [[2.0] * 4]
    assert recs[d].calls == []
    # a batch writing parent and child in one epoch: one call each
    e2 = mmsb.batch_route_deltas(state, [(a, mmsb.sparse_delta([0], np.array([5], F32), 4)),
                                         (b, mmsb.sparse_delta([1], np.array([1], F32), 4))])
    assert recs[b].calls[-1] == (b, e2) and len(recs[b].calls) == 2
    assert recs[c].calls[-1] == (c, e2) and len(recs[c].calls) == 2
    # edge changes change visible values
    e3 = mmsb.remove_dependency(state, b, c)
    assert recs[c].calls[-1] == (c, e3) and recs[c].seen[-1] == [0.0] * 4
    e4 = mmsb.add_dependency(state, a, c, weight=-1.0)
    assert recs[c].calls[-1] == (c, e4) and recs[c].seen[-1] == [-5.0, -1.0, -1.0, -1.0]
    assert len(recs[c].calls) == 4
    assert recs[d].calls == []


def test_observer_when_a_parent_is_deleted(state):
    a, b = (mmsb.create_page(state, size=4, dtype=jnp.float32).id for _ in range(2))
    mmsb.add_dependency(state, a, b)
    mmsb.update_page(state, a, np.ones(4, F32))
    rec = Recorder(state, b)
    state.observe(b, rec)
    mmsb.delete_page(state, a)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, b)), np.zeros(4, F32))
    assert rec.calls == [(b, state.epoch)]


def test_observer_after_pool_growth(state):
    a, b = (int(i) for i in mmsb.create_pages(state, 2, size=4, dtype=np.float32))
    mmsb.add_dependency(state, a, b)
    rec = Recorder(state, b)
    state.observe(b, rec)
    mmsb.create_pages(state, 20, size=4, dtype=np.float32)  # the pool grows past 16 slots
    e = mmsb.update_page(state, a, np.ones(4, F32))
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, b)), np.ones(4, F32))
    assert rec.calls == [(b, e)]


def test_observers_are_not_called_by_replay(state):
    a = mmsb.create_page(state, size=4, dtype=jnp.float32).id
    rec = Recorder()
    state.observe(a, rec)
    mmsb.update_page(state, a, np.ones(4, F32))
    n = len(rec.calls)
    mmsb.replay_to_epoch(state, state.epoch)
    mmsb.diff(state, 0, state.epoch)
    assert len(rec.calls) == n == 1


def test_replay_past_the_end_is_refused_for_paths_too(tmp_path):
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    p = mmsb.create_page(s, size=2, dtype=np.float32)
    mmsb.update_page(s, p.id, np.ones(2, F32))  # epoch 2
    mmsb.mmsb_stop(s)
    assert mmsb.replay_to_epoch(path, 2).epoch == 2
    assert mmsb.replay_to_epoch(path, None).epoch == 2  # None: everything
    for e in (3, 99):
        with pytest.raises(InvalidArgumentError, match=f"epoch={e} is past the state's last epoch 2"):
            mmsb.replay_to_epoch(path, e)


# ------------------------------------------------- records the caller must enable, and salvage
@pytest.mark.parametrize("mode", ["torn_tail", "point_in_time", "skip_corrupt"])
def test_a_semiring_the_caller_did_not_give_stops_every_recovery_mode(tmp_path, mode):
    """An accumulate under a user semiring is not damage: no recovery mode skips it (that
    opened a state that never was and checkpointed it, so a later correct open kept it)."""
    from mmsb_jax import semirings

    mine = semirings.MAX_PLUS._replace(name="mymax")
    path = tmp_path / "s"
    st = mmsb.mmsb_start(path)
    p = mmsb.create_page(st, size=3, dtype=jnp.float32).id
    mmsb.update_page(st, p, np.array([1, 2, 3], np.float32))
    mmsb.route_delta(st, p, mmsb.accumulate_delta(jnp.array([5.0, 0.0, 0.0], jnp.float32), mine))
    mmsb.route_delta(st, p, mmsb.sparse_delta([1], jnp.array([99.0], jnp.float32), 3))
    mmsb.mmsb_stop(st)
    with pytest.raises(mmsb.SerializationError) as ei:
        mmsb.mmsb_open(path, recovery=mode)
    assert not isinstance(ei.value, mmsb.CorruptLogError)
    assert "ACCUMULATE record of epoch 3" in str(ei.value) and "semirings=" in str(ei.value)
    assert "not damaged" in str(ei.value) and not (path / "checkpoints").exists()
    st = mmsb.mmsb_open(path, semirings=[mine])
    assert mmsb.query_page(st, p).tolist() == [5.0, 99.0, 3.0]
    mmsb.mmsb_stop(st)


def test_a_64_bit_store_opened_without_x64_is_refused_in_every_mode(tmp_path):
    """Opening a float64 store without JAX's 64-bit mode names the record and the fix; a
    salvage mode no longer opens it empty (and checkpoints nothing)."""
    import subprocess
    import sys

    path = tmp_path / "s"
    code = ("import jax; jax.config.update('jax_enable_x64', True)\n"
            "import numpy as np, jax.numpy as jnp, mmsb_jax as mmsb\n"
            f"st = mmsb.mmsb_start({str(path)!r})\n"
            "p = mmsb.create_page(st, size=2, dtype=jnp.float64)\n"
            "mmsb.update_page(st, p.id, np.array([1.5, -2.0]))\n"
            "mmsb.mmsb_stop(st)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    for mode in ("torn_tail", "point_in_time", "skip_corrupt"):
        with pytest.raises(mmsb.SerializationError, match=r"CREATE_PAGES record of epoch 1.*float64.*jax_enable_x64"):
            mmsb.mmsb_open(path, recovery=mode)
    assert not (path / "checkpoints").exists()


def test_point_in_time_refuses_an_intact_record_that_cannot_apply_and_skip_corrupt_skips_it(tmp_path):
    """point_in_time opens the intact prefix: an intact record that cannot apply (a page that
    does not exist) ends the open with an error naming it, instead of skipping it and going
    on (a state that never was); skip_corrupt skips it and says so."""
    from mmsb_jax.log import Sparse, TLog

    path = tmp_path / "s"
    st = mmsb.mmsb_start(path)
    p = mmsb.create_page(st, size=4, dtype=jnp.float32).id
    mmsb.update_page(st, p, np.ones(4, np.float32))
    mmsb.mmsb_stop(st)
    with TLog(path / "log") as log:
        log.append_record(Sparse(epoch=3, page_id=77, indices=np.array([0], np.int32), values=np.ones(1, np.float32)))
        log.append_record(Sparse(epoch=4, page_id=p, indices=np.array([1], np.int32), values=np.full(1, 5.0, np.float32)))
    with pytest.raises(mmsb.CorruptLogError, match="SPARSE record of epoch 3"):
        mmsb.mmsb_open(path, recovery="point_in_time")
    st = mmsb.mmsb_open(path, recovery="skip_corrupt")
    assert st.epoch == 4 and mmsb.query_page(st, p).tolist() == [1.0, 5.0, 1.0, 1.0]
    assert any("not applied" in s.reason for s in st.recovery_report.skipped)
    mmsb.mmsb_stop(st)
