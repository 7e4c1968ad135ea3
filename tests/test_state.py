"""The MMSBState shell: epochs, pages vs a numpy model, allocator, threads, devices, bad input."""

import re
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import as_bits, assert_bits_equal, rand_array, writes_nothing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import mmsb_jax as mmsb
from mmsb_jax import (
    GPUFallbackWarning,
    InvalidArgumentError,
    InvalidDeltaError,
    PageNotFoundError,
    StateClosedError,
    UnsupportedLocationError,
)

# (shape, dtype) of the pages the model-based tests use: 1-D and 2-D, four dtypes.
SPECS = (((4,), np.uint8), ((2, 3), np.float32), ((5,), np.int32), ((3,), np.bool_), ((6,), np.float32))
SPARSE_K = 3


# --------------------------------------------------------------------------- helpers






def snapshot(state):
    return state_digest_and_epoch(state) + (state.num_pages,)


def state_digest_and_epoch(state):
    return (mmsb.state_digest(state), state.epoch)


def has_gpu():
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.fixture
def state():
    s = mmsb.mmsb_start()
    try:
        yield s
    finally:
        mmsb.mmsb_stop(s)


@pytest.fixture
def populated():
    """A state with an int32 (4,) page (id 0), a float32 (2, 3) page (id 1), a bool page (id 2),
    and a deleted page (id 3), all with non-zero content."""
    s = mmsb.mmsb_start()
    try:
        a = mmsb.create_page(s, size=4, dtype=jnp.int32)
        b = mmsb.create_page(s, shape=(2, 3), dtype=jnp.float32)
        c = mmsb.create_page(s, size=3, dtype=jnp.bool_)
        d = mmsb.create_page(s, size=4, dtype=jnp.int32)
        mmsb.update_page(s, a.id, np.array([1, -2, 3, 2**31 - 1], np.int32))
        mmsb.update_page(s, b.id, np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5)
        mmsb.update_page(s, c.id, np.array([True, False, True]))
        mmsb.delete_page(s, d.id)
        assert (a.id, b.id, c.id, d.id) == (0, 1, 2, 3)
        yield s
    finally:
        mmsb.mmsb_stop(s)


# --------------------------------------------------------------------------- epochs
def test_epochs_one_per_committed_operation(state):
    assert state.epoch == 0
    p = mmsb.create_page(state, size=4, dtype=jnp.float32)
    assert state.epoch == 1 and state.page_epoch(p.id) == 1 and state.page_epoch(p) == 1
    ids = mmsb.create_pages(state, 3, size=4, dtype=jnp.float32)
    assert state.epoch == 2
    assert [state.page_epoch(int(i)) for i in ids] == [2, 2, 2]
    assert mmsb.update_page(state, p.id, np.ones(4, np.float32)) == 3
    assert state.page_epoch(p.id) == 3 and state.page_epoch(int(ids[0])) == 2
    assert mmsb.route_delta(state, int(ids[0]), mmsb.sparse_delta([1], jnp.array([2.0], jnp.float32), 4)) == 4
    assert state.page_epoch(int(ids[0])) == 4 and state.page_epoch(p.id) == 3
    e = mmsb.batch_route_deltas(
        state,
        [
            (int(ids[1]), mmsb.dense_delta(jnp.ones(4, bool), jnp.full(4, 3.0, jnp.float32))),
            (int(ids[2]), mmsb.sparse_delta([0], jnp.array([1.0], jnp.float32), 4)),
            (int(ids[1]), mmsb.accumulate_delta(jnp.ones(4, jnp.float32))),
        ],
    )
    assert e == 5 and state.epoch == 5
    assert state.page_epoch(int(ids[1])) == 5 and state.page_epoch(int(ids[2])) == 5
    assert state.page_epoch(int(ids[0])) == 4
    e = mmsb.route_sparse_batch(state, np.array([p.id, int(ids[0])]), np.array([[0], [3]]), np.full((2, 1), 9.0, np.float32))
    assert e == 6 and state.page_epoch(p.id) == 6 and state.page_epoch(int(ids[0])) == 6
    assert state.page_epoch(int(ids[1])) == 5
    mmsb.delete_page(state, int(ids[2]))
    assert state.epoch == 7
    assert mmsb.get_stats(state)["epoch"] == 7


def test_update_page_identical_content_is_a_noop(state):
    p = mmsb.create_page(state, size=5, dtype=jnp.float32)
    data = np.array([1.0, np.nan, -0.0, np.inf, 2.5], np.float32)
    e = mmsb.update_page(state, p.id, data)
    before = state_digest_and_epoch(state)
    assert mmsb.update_page(state, p.id, data.copy()) is None
    assert mmsb.update_page(state, p.id, jnp.asarray(data)) is None
    assert state_digest_and_epoch(state) == before and state.page_epoch(p.id) == e
    # -0.0 -> 0.0 is a change (bits differ); so is a NaN with another payload.
    flipped = data.copy()
    flipped[2] = 0.0
    assert mmsb.update_page(state, p.id, flipped) == e + 1
    other_nan = flipped.copy()
    other_nan.view(np.uint32)[1] ^= 1
    assert mmsb.update_page(state, p.id, other_nan) == e + 2
    assert_bits_equal(mmsb.query_page(state, p.id), other_nan)


def test_update_zeros_on_a_fresh_page_is_a_noop(state):
    p = mmsb.create_page(state, shape=(2, 2), dtype=jnp.int32)
    assert mmsb.update_page(state, p.id, np.zeros((2, 2), np.int32)) is None
    assert state.epoch == 1


def test_update_page_refuses_flat_data_for_a_2d_page(state):
    """A wrong shape raises (as the docstring says), even with the right number of elements."""
    p = mmsb.create_page(state, shape=(4, 3), dtype=jnp.float32)
    before = mmsb.state_digest(state)
    for data in (np.arange(12, dtype=np.float32), np.arange(12, dtype=np.float32).reshape(3, 4)):
        with pytest.raises(InvalidDeltaError, match=r"has shape \((12,|3, 4)\).*expected shape \(4, 3\)"):
            mmsb.update_page(state, p.id, data)
    assert mmsb.state_digest(state) == before
    data = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert mmsb.update_page(state, p.id, data) == 2
    assert_bits_equal(mmsb.query_page(state, p.id), data)


# --------------------------------------------------------------------------- model-based
class StateMachine(RuleBasedStateMachine):
    """Random operations on a state vs a dict of numpy arrays (page id -> content)."""

    mesh = None  # the sharded variant below splits every pool over 8 devices

    def __init__(self):
        super().__init__()
        self.state = mmsb.mmsb_start(mesh=self.mesh)
        self.model: dict[int, np.ndarray] = {}
        self.next_id = 0
        self.epoch = 0
        self.page_epochs: dict[int, int] = {}
        self.rng = np.random.default_rng(0)

    def teardown(self):
        mmsb.mmsb_stop(self.state)

    def _commit(self, got_epoch, pids):
        self.epoch += 1
        assert got_epoch == self.epoch == self.state.epoch
        for pid in pids:
            self.page_epochs[pid] = self.epoch

    def _pick(self, data, spec=None, dtype=None):
        ids = sorted(
            i
            for i, a in self.model.items()
            if (spec is None or (a.shape, a.dtype) == spec) and (dtype is None or a.dtype == dtype)
        )
        return data.draw(st.sampled_from(ids)) if ids else None

    @rule(spec=st.sampled_from(SPECS))
    def create_page(self, spec):
        shape, dtype = spec
        p = mmsb.create_page(self.state, shape=shape, dtype=dtype)
        assert p.id == self.next_id
        assert p.shape == shape and np.dtype(p.dtype) == np.dtype(dtype)
        self.next_id += 1
        self.model[p.id] = np.zeros(shape, dtype)
        self._commit(self.state.epoch, [p.id])

    @rule(spec=st.sampled_from(SPECS), n=st.integers(0, 4))
    def create_pages(self, spec, n):
        shape, dtype = spec
        ids = mmsb.create_pages(self.state, n, shape=shape, dtype=dtype)
        assert ids.tolist() == list(range(self.next_id, self.next_id + n))
        self.next_id += n
        if n == 0:
            assert self.state.epoch == self.epoch
            return
        for i in ids.tolist():
            self.model[i] = np.zeros(shape, dtype)
        self._commit(self.state.epoch, ids.tolist())

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**32 - 1), same=st.booleans())
    def update_page(self, data, seed, same):
        pid = self._pick(data)
        old = self.model[pid]
        new = old.copy() if same else rand_array(np.random.default_rng(seed), old.shape, old.dtype)
        e = mmsb.update_page(self.state, pid, new)
        if (as_bits(new) == as_bits(old)).all():
            assert e is None and self.state.epoch == self.epoch
        else:
            self._commit(e, [pid])
            self.model[pid] = new

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["dense", "sparse"]))
    def route_delta(self, data, seed, kind):
        pid = self._pick(data)
        d, new = self._delta(np.random.default_rng(seed), kind, self.model[pid])
        e = mmsb.route_delta(self.state, pid, d)
        if writes_nothing(d):  # e.g. an all-false mask: no epoch, the page's epoch stays
            assert e is None and self.state.epoch == self.epoch
            return
        self._commit(e, [pid])
        self.model[pid] = new

    def _delta(self, rng, kind, page):
        shape, dtype = page.shape, page.dtype
        new = page.copy()
        if kind == "dense":
            mask = rng.random(shape) < 0.5
            payload = rand_array(rng, shape, dtype)
            new[mask] = payload[mask]
            return mmsb.dense_delta(jnp.asarray(mask), jnp.asarray(payload)), new
        idx = rng.integers(0, page.size, size=SPARSE_K).astype(np.int32)
        vals = rand_array(rng, (SPARSE_K,), dtype)
        flat = new.reshape(-1)
        for i, v in zip(idx.tolist(), vals):
            flat[i] = v
        return mmsb.sparse_delta(idx, jnp.asarray(vals), shape), new

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), all_sparse=st.booleans())
    def batch_route_deltas(self, data, seed, n, all_sparse):
        rng = np.random.default_rng(seed)
        entries, touched = [], []
        # Pages of one dtype (of any shape, so possibly several pools): a batch mixing dtypes
        # is tested on its own in test_router.py.
        dtype = None
        for _ in range(n):
            pid = self._pick(data, dtype=dtype)
            dtype = self.model[pid].dtype
            kind = "sparse" if all_sparse else data.draw(st.sampled_from(["dense", "sparse"]))
            d, new = self._delta(rng, kind, self.model[pid])
            entries.append((pid, d))
            self.model[pid] = new
            if not writes_nothing(d):
                touched.append(pid)
        e = mmsb.batch_route_deltas(self.state, entries)
        if not touched:
            assert e is None and self.state.epoch == self.epoch
            return
        self._commit(e, touched)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4))
    def route_sparse_batch(self, data, seed, n):
        rng = np.random.default_rng(seed)
        spec = data.draw(st.sampled_from(sorted({(a.shape, a.dtype.str) for a in self.model.values()})))
        spec = (spec[0], np.dtype(spec[1]))
        pids = [self._pick(data, spec) for _ in range(n)]
        size = int(np.prod(spec[0]))
        ind = rng.integers(0, size, size=(n, SPARSE_K))
        vals = rand_array(rng, (n, SPARSE_K), spec[1])
        for pid, row_i, row_v in zip(pids, ind, vals):
            flat = self.model[pid].reshape(-1)
            for i, v in zip(row_i.tolist(), row_v):
                flat[i] = v
        self._commit(mmsb.route_sparse_batch(self.state, np.array(pids), ind, vals), pids)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_page(self, data):
        pid = self._pick(data)
        mmsb.delete_page(self.state, pid)
        del self.model[pid]
        del self.page_epochs[pid]
        self._commit(self.state.epoch, [])
        with pytest.raises(PageNotFoundError):
            mmsb.query_page(self.state, pid)

    @invariant()
    def matches_model(self):
        assert self.state.epoch == self.epoch
        assert self.state.page_ids().tolist() == sorted(self.model)
        assert self.state.num_pages == len(self.model)
        for pid, want in self.model.items():
            assert_bits_equal(mmsb.query_page(self.state, pid), want)
            assert self.state.page_epoch(pid) == self.page_epochs[pid]


def test_random_operations_match_numpy_model():
    run_state_machine_as_test(
        StateMachine, settings=settings(settings.get_profile("mmsb"), stateful_step_count=15)
    )


class ShardedStateMachine(StateMachine):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("pages",))

    def teardown(self):
        for pool in self.state._pools:  # every arena stayed split over the 8 devices
            assert pool.array.sharding == pool.sharding and len(pool.array.sharding.device_set) == 8
            assert pool.capacity % 8 == 0
        super().teardown()


def test_random_operations_on_sharded_pools_match_numpy_model():
    """The same model test with every pool split over 8 devices by slot."""
    assert len(jax.devices()) == 8
    run_state_machine_as_test(
        ShardedStateMachine, settings=settings(settings.get_profile("mmsb"), max_examples=15, stateful_step_count=15)
    )


def test_reused_slot_reads_zeros(state):
    ids = mmsb.create_pages(state, 3, size=4, dtype=jnp.int32)
    for i in ids.tolist():
        mmsb.update_page(state, i, np.full(4, i + 7, np.int32))
    mmsb.delete_page(state, int(ids[1]))
    slot_stats = mmsb.get_stats(state)["pools"][0]
    assert slot_stats["free_slots"] == 1
    q = mmsb.create_page(state, size=4, dtype=jnp.int32)
    assert q.id == 3  # ids are never reused
    assert mmsb.get_stats(state)["pools"][0]["free_slots"] == 0  # ... but the slot is
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, q.id)), np.zeros(4, np.int32))
    for i in (0, 2):
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, i)), np.full(4, i + 7, np.int32))
    mmsb.delete_page(state, 0)
    mmsb.delete_page(state, 2)
    more = mmsb.create_pages(state, 3, size=4, dtype=jnp.int32)
    assert more.tolist() == [4, 5, 6]
    for i in more.tolist():
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, i)), np.zeros(4, np.int32))
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, q.id)), np.zeros(4, np.int32))


# --------------------------------------------------------------------------- allocator
def test_allocator_stats(state):
    ids = mmsb.create_pages(state, 3, size=4, dtype=jnp.int32)
    mmsb.create_page(state, shape=(2, 3), dtype=jnp.float32)
    st_ = mmsb.get_stats(state)
    p0, p1 = st_["pools"]
    assert (p0["shape"], p0["dtype"], p0["pages"], p0["bytes"]) == ((4,), "int32", 3, 48)
    assert (p1["shape"], p1["dtype"], p1["pages"], p1["bytes"]) == ((2, 3), "float32", 1, 24)
    for p in (p0, p1):
        assert p["capacity"] >= p["pages"] and p["pressure"] == pytest.approx(p["pages"] / p["capacity"])
        assert p["location"] == "cpu"
    assert st_["pages"] == 4 and st_["bytes"] == 72
    assert st_["capacity"] == p0["capacity"] + p1["capacity"]
    assert st_["pressure"] == pytest.approx(4 / st_["capacity"])
    mmsb.delete_page(state, int(ids[0]))
    p0 = mmsb.get_stats(state)["pools"][0]
    assert (p0["pages"], p0["bytes"], p0["free_slots"]) == (2, 32, 1)
    cap = p0["capacity"]
    many = mmsb.create_pages(state, 2 * cap, size=4, dtype=jnp.int32)
    p0 = mmsb.get_stats(state)["pools"][0]
    assert p0["pages"] == 2 + 2 * cap and p0["capacity"] >= p0["pages"] and p0["free_slots"] == 0
    assert 0 < p0["pressure"] <= 1
    assert mmsb.get_stats(state)["pages"] == state.num_pages == 3 + 2 * cap
    # every page of the grown pool still reads as written
    mmsb.update_page(state, int(many[-1]), np.arange(4, dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, int(many[-1]))), np.arange(4))
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, int(many[0]))), np.zeros(4))


def test_create_pages_consecutive_ids(state):
    mmsb.create_page(state, size=2)
    ids = mmsb.create_pages(state, 5, size=3, dtype=jnp.float32)
    assert ids.tolist() == [1, 2, 3, 4, 5]
    assert state.epoch == 2
    assert mmsb.create_pages(state, 0, size=3).tolist() == [] and state.epoch == 2
    assert mmsb.create_page(state, size=3).id == 6


def test_create_pages_zero_changes_nothing(state):
    """n=0 commits nothing: no epoch, so nothing observable (digest, pools) may change either."""
    mmsb.create_page(state, size=3, dtype=jnp.float32)
    before = snapshot(state)
    pools_before = len(mmsb.get_stats(state)["pools"])
    assert mmsb.create_pages(state, 0, size=7, dtype=jnp.int32).tolist() == []
    assert mmsb.create_pages(state, 0, size=3, dtype=jnp.float32).tolist() == []
    assert snapshot(state) == before
    assert len(mmsb.get_stats(state)["pools"]) == pools_before


def test_concurrent_create_page(state):
    per_thread, n_threads = 12, 8
    results: list[list[int]] = [[] for _ in range(n_threads)]
    errors = []
    barrier = threading.Barrier(n_threads)

    def work(t):
        try:
            barrier.wait()
            for _ in range(per_thread):
                results[t].append(mmsb.create_page(state, size=4, dtype=jnp.uint8).id)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    all_ids = sorted(i for r in results for i in r)
    total = per_thread * n_threads
    assert all_ids == list(range(total))
    assert state.num_pages == total and mmsb.get_stats(state)["pages"] == total
    assert state.epoch == total
    assert state.page_ids().tolist() == all_ids
    assert sorted(state.page_epoch(i) for i in all_ids) == list(range(1, total + 1))


def test_concurrent_mixed_operations(state):
    """Threads creating, writing and routing to their own pages: every write lands, one epoch each."""
    n_threads, rounds = 8, 5
    errors = []
    own: dict[int, list[int]] = {}
    barrier = threading.Barrier(n_threads)

    def work(t):
        try:
            barrier.wait()
            pid = mmsb.create_page(state, size=4, dtype=jnp.int32).id
            own[t] = [pid]
            for r in range(rounds):
                mmsb.update_page(state, pid, np.full(4, 100 * t + r + 1, np.int32))
                mmsb.route_delta(state, pid, mmsb.sparse_delta([r % 4], jnp.array([-t - 1], jnp.int32), 4))
                mmsb.batch_route_deltas(state, [(pid, mmsb.sparse_delta([3], jnp.array([t], jnp.int32), 4))])
                mmsb.route_sparse_batch(state, np.array([pid]), np.array([[0]]), np.array([[r]], np.int32))
                mmsb.query_page(state, pid)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert state.epoch == n_threads * (1 + 4 * rounds)
    r = rounds - 1
    for t, (pid,) in own.items():
        want = np.full(4, 100 * t + r + 1, np.int32)
        want[r % 4] = -t - 1
        want[3] = t
        want[0] = r
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, pid)), want)


# --------------------------------------------------------------------------- devices
def test_enable_gpu_falls_back_with_one_warning():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = mmsb.mmsb_start(enable_gpu=True)
        try:
            pages = [mmsb.create_page(s, size=4, location=loc) for loc in ("gpu", "gpu", "cpu")]
            pages.append(mmsb.create_page(s, size=8, location="gpu"))
        finally:
            mmsb.mmsb_stop(s)
    fallbacks = [w for w in rec if issubclass(w.category, GPUFallbackWarning)]
    if has_gpu():  # pragma: no cover - only on a GPU machine without JAX_PLATFORMS=cpu
        assert not fallbacks
        return
    assert len(fallbacks) == 1, [str(w.message) for w in fallbacks]
    assert not s.enable_gpu
    for p in pages:
        assert p.location == "cpu" and p.device.platform == "cpu"


def test_gpu_location_without_enable_gpu_falls_back(state):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = mmsb.create_page(state, size=4, location="gpu")
        q = mmsb.create_page(state, shape=(2, 2), location="gpu")
    fallbacks = [w for w in rec if issubclass(w.category, GPUFallbackWarning)]
    assert len(fallbacks) == 1 and "gpu" in str(fallbacks[0].message)
    for page in (p, q):
        assert page.location == "cpu" and page.device.platform == "cpu"
    assert all(pool["location"] == "cpu" for pool in mmsb.get_stats(state)["pools"])
    mmsb.update_page(state, p.id, np.arange(4, dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, p.id)), np.arange(4))


# --------------------------------------------------------------------------- bad input
def check_rejected(state, fn, error, *needles):
    """``fn()`` raises ``error`` whose message names every needle; the state is unchanged."""
    before = snapshot(state)
    with pytest.raises(error) as ei:
        fn()
    msg = str(ei.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert snapshot(state) == before
    return msg


@pytest.mark.parametrize(
    "data, needle",
    [
        (np.zeros(5, np.int32), "(5,)"),
        (np.zeros(3, np.int32), "(3,)"),
        (np.zeros((2, 2), np.int32), "(2, 2)"),
        (np.zeros((4, 1), np.int32), "(4, 1)"),
        (np.int32(7), "()"),
        (np.zeros(4, np.float32), "float32"),
        (np.zeros(4, np.int64), "int64"),
        (np.zeros(4, np.uint8), "uint8"),
        (jnp.zeros(4, jnp.float32), "float32"),
        (np.array(["a", "b", "c", "d"]), "<U1"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_update_page_bad_data(populated, data, needle):
    check_rejected(populated, lambda: mmsb.update_page(populated, 0, data), InvalidDeltaError, needle)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(populated, 0)), [1, -2, 3, 2**31 - 1])


def test_update_page_bad_data_2d(populated):
    check_rejected(populated, lambda: mmsb.update_page(populated, 1, np.zeros((3, 2), np.float32)), InvalidDeltaError, "(3, 2)", "(2, 3)")
    check_rejected(populated, lambda: mmsb.update_page(populated, 1, np.zeros(5, np.float32)), InvalidDeltaError, "(5,)")
    check_rejected(populated, lambda: mmsb.update_page(populated, 2, np.zeros(3, np.uint8)), InvalidDeltaError, "uint8", "bool")


UNKNOWN_IDS = [(999, "999"), (3, "3"), (-1, "-1"), ("x", "'x'"), (1.0, "1.0"), (None, "None")]


@pytest.mark.parametrize("page_id, needle", UNKNOWN_IDS, ids=[n for _, n in UNKNOWN_IDS])
@pytest.mark.parametrize("op", ["update_page", "route_delta", "query_page", "delete_page", "page_epoch"])
def test_unknown_page_id(populated, op, page_id, needle):
    call = {
        "update_page": lambda: mmsb.update_page(populated, page_id, np.zeros(4, np.int32)),
        "route_delta": lambda: mmsb.route_delta(
            populated, page_id, mmsb.dense_delta(jnp.ones(4, bool), jnp.ones(4, jnp.int32))
        ),
        "query_page": lambda: mmsb.query_page(populated, page_id),
        "delete_page": lambda: mmsb.delete_page(populated, page_id),
        "page_epoch": lambda: populated.page_epoch(page_id),
    }[op]
    msg = check_rejected(populated, call, PageNotFoundError, needle)
    assert isinstance(page_id, str) or re.search(r"(?<![\d.])" + re.escape(needle) + r"(?![\d.])", msg), msg


@pytest.mark.parametrize(
    "make, needles",
    [
        # a hand-built sparse delta with an index outside the page
        (lambda: mmsb.SparseDelta(jnp.array([1, 9], jnp.int32), jnp.array([5, 6], jnp.int32), (4,)), ("9",)),
        (lambda: mmsb.SparseDelta(jnp.array([-2, 1], jnp.int32), jnp.array([5, 6], jnp.int32), (4,)), ("-2",)),
        (lambda: mmsb.sparse_delta([1], jnp.array([5], jnp.int32), 8), ("(8,)", "(4,)")),
        (lambda: mmsb.sparse_delta([1], jnp.array([5.0], jnp.float32), 4), ("float32", "int32")),
        (lambda: mmsb.dense_delta(jnp.ones(5, bool), jnp.ones(5, jnp.int32)), ("(5,)", "(4,)")),
        (lambda: mmsb.dense_delta(jnp.ones((2, 2), bool), jnp.ones((2, 2), jnp.int32)), ("(2, 2)",)),
        (lambda: mmsb.dense_delta(jnp.ones(4, bool), jnp.ones(4, jnp.uint8)), ("uint8",)),
        (lambda: mmsb.accumulate_delta(jnp.ones(4, jnp.float32)), ("float32",)),
        (lambda: np.zeros(4, np.int32), ("ndarray",)),
        (lambda: "delta", ("str",)),
    ],
    ids=["oob", "negative", "sparse-shape", "sparse-dtype", "dense-shape", "dense-2d", "dense-dtype", "acc-dtype", "array", "str"],
)
def test_route_delta_bad_delta(populated, make, needles):
    check_rejected(populated, lambda: mmsb.route_delta(populated, 0, make()), InvalidDeltaError, *needles)


def test_route_delta_accumulate_on_non_float_page(populated):
    d = mmsb.accumulate_delta(jnp.ones(3, jnp.float32), "real")
    check_rejected(populated, lambda: mmsb.route_delta(populated, 2, d), InvalidDeltaError, "float32", "bool")


HAND_BUILT = {
    # Delta dataclasses built directly, bypassing the checking constructors.
    "sparse-values-length": (
        lambda: mmsb.SparseDelta(jnp.array([0, 1], jnp.int32), jnp.array([9], jnp.int32), (4,)),
        ("(2,)", "(1,)"),
    ),
    "sparse-float-indices": (
        lambda: mmsb.SparseDelta(jnp.array([0.0, 1.0], jnp.float32), jnp.array([9, 8], jnp.int32), (4,)),
        ("float32",),
    ),
    "dense-int-mask": (
        lambda: mmsb.DenseDelta(jnp.array([1, 0, 2, 0], jnp.int32), jnp.array([5, 6, 7, 8], jnp.int32)),
        ("int32",),
    ),
    "dense-mask-shape": (
        lambda: mmsb.DenseDelta(jnp.array([True]), jnp.array([5, 6, 7, 8], jnp.int32)),
        ("(1,)", "(4,)"),
    ),
}


@pytest.mark.parametrize("case", list(HAND_BUILT), ids=str)
@pytest.mark.parametrize("how", ["route_delta", "batch_route_deltas"])
def test_route_hand_built_malformed_delta(populated, case, how):
    """A malformed delta is refused up front: InvalidDeltaError, nothing applied, no epoch used."""
    make, needles = HAND_BUILT[case]
    call = {
        "route_delta": lambda: mmsb.route_delta(populated, 0, make()),
        "batch_route_deltas": lambda: mmsb.batch_route_deltas(populated, [(0, make())]),
    }[how]
    check_rejected(populated, call, InvalidDeltaError, *needles)
    np.testing.assert_array_equal(np.asarray(mmsb.query_page(populated, 0)), [1, -2, 3, 2**31 - 1])


BAD_CREATE = {
    "location-tpu": ({"size": 4, "location": "tpu"}, UnsupportedLocationError, ("'tpu'",)),
    "location-cuda": ({"size": 4, "location": "cuda"}, UnsupportedLocationError, ("'cuda'",)),
    "location-None": ({"size": 4, "location": None}, UnsupportedLocationError, ("None",)),
    "size-negative": ({"size": -3}, InvalidArgumentError, ("-3",)),
    "size-zero": ({"size": 0}, InvalidArgumentError, ("size=0",)),
    "size-float": ({"size": 2.5}, InvalidArgumentError, ("2.5",)),
    "size-str": ({"size": "8"}, InvalidArgumentError, ("'8'",)),
    "size-bool": ({"size": True}, InvalidArgumentError, ("True",)),
    "shape-zero-dim": ({"shape": (2, 0)}, InvalidArgumentError, ("(2, 0)",)),
    "shape-negative": ({"shape": (-1, 3)}, InvalidArgumentError, ("(-1, 3)",)),
    "shape-float": ({"shape": (2.5, 2)}, InvalidArgumentError, ("2.5",)),
    "shape-str": ({"shape": ("a", 2)}, InvalidArgumentError, ("'a'",)),
    "size-shape-mismatch": ({"size": 5, "shape": (2, 3)}, InvalidArgumentError, ("size=5", "(2, 3)")),
    "size-str-with-shape": ({"size": "abc", "shape": (2, 3)}, InvalidArgumentError, ("'abc'",)),
    "no-size": ({}, InvalidArgumentError, ("size",)),
    "dtype-object": ({"size": 4, "dtype": object}, InvalidArgumentError, ("object",)),
    "dtype-str": ({"size": 4, "dtype": str}, InvalidArgumentError, ("<U",)),
    "dtype-complex": ({"size": 4, "dtype": "complex64"}, InvalidArgumentError, ("complex64",)),
    "dtype-unknown": ({"size": 4, "dtype": "not-a-dtype"}, InvalidArgumentError, ("'not-a-dtype'",)),
    # JAX's 64-bit mode is off here: 64-bit pages would silently hold 32-bit data
    "dtype-float64": ({"size": 4, "dtype": np.float64}, InvalidArgumentError, ("float64", "jax_enable_x64")),
    "dtype-int64": ({"size": 4, "dtype": "int64"}, InvalidArgumentError, ("int64", "would store int32")),
    "dtype-uint64": ({"size": 4, "dtype": jnp.uint64}, InvalidArgumentError, ("uint64",)),
    # flat page indices are int32: a page holds at most 2**31 elements
    "size-huge": ({"size": 2**62}, InvalidArgumentError, (str(2**62), "2**31")),
    "shape-huge": ({"shape": (2**16, 2**16, 2)}, InvalidArgumentError, ("(65536, 65536, 2)", str(2**33))),
}


@pytest.mark.parametrize("kwargs, error, needles", list(BAD_CREATE.values()), ids=list(BAD_CREATE))
def test_create_page_bad_arguments(populated, kwargs, error, needles):
    check_rejected(populated, lambda: mmsb.create_page(populated, **kwargs), error, *needles)
    kwargs = dict(kwargs)
    n = kwargs.pop("size", None)
    if "shape" in kwargs or n is not None:  # the same through create_pages
        check_rejected(populated, lambda: mmsb.create_pages(populated, 2, size=n, **kwargs), error, *needles)


def test_bad_size_rejected_even_after_a_good_equal_size(populated):
    """size=True / size=1.0 equal 1 as dict keys: a cached spec for size=1 must not let them in."""
    mmsb.create_page(populated, size=1)
    for bad in (True, 1.0):
        check_rejected(populated, lambda bad=bad: mmsb.create_page(populated, size=bad), InvalidArgumentError, repr(bad))


@pytest.mark.parametrize("n, needle", [(-1, "-1"), (2.0, "2.0"), ("3", "'3'"), (True, "True")])
def test_create_pages_bad_count(populated, n, needle):
    check_rejected(populated, lambda: mmsb.create_pages(populated, n, size=4), InvalidArgumentError, needle)


@pytest.mark.parametrize("fsync", ["sometimes", "", None, "ALWAYS"])
def test_mmsb_start_bad_fsync(fsync, tmp_path):
    with pytest.raises(InvalidArgumentError) as ei:
        mmsb.mmsb_start(path=tmp_path / "s", fsync=fsync)
    assert repr(fsync) in str(ei.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_mmsb_start_good_fsync(fsync):
    s = mmsb.mmsb_start(fsync=fsync)
    try:
        assert s.fsync == fsync and s.epoch == 0 and s.num_pages == 0
    finally:
        mmsb.mmsb_stop(s)


def test_stopped_state_rejects_every_operation():
    s = mmsb.mmsb_start()
    p = mmsb.create_page(s, size=4, dtype=jnp.float32)
    d = mmsb.sparse_delta([0], jnp.array([1.0], jnp.float32), 4)
    assert mmsb.mmsb_stop(s) is None
    assert s.closed
    ops = {
        "create_page": lambda: mmsb.create_page(s, size=4),
        "create_pages": lambda: mmsb.create_pages(s, 2, size=4),
        "update_page": lambda: mmsb.update_page(s, p.id, np.ones(4, np.float32)),
        "route_delta": lambda: mmsb.route_delta(s, p.id, d),
        "batch_route_deltas": lambda: mmsb.batch_route_deltas(s, [(p.id, d)]),
        "route_sparse_batch": lambda: mmsb.route_sparse_batch(
            s, np.array([p.id]), np.array([[0]]), np.ones((1, 1), np.float32)
        ),
        "delete_page": lambda: mmsb.delete_page(s, p.id),
        "checkpoint": lambda: mmsb.checkpoint(s),
        "query_page": lambda: mmsb.query_page(s, p.id),
    }
    wrongly_allowed = []
    for name, fn in ops.items():
        try:
            fn()
        except StateClosedError:
            continue
        wrongly_allowed.append(name)
    assert not wrongly_allowed, f"allowed after mmsb_stop: {wrongly_allowed}"
    assert s.epoch == 1
    mmsb.mmsb_stop(s)  # stopping twice is harmless


def test_digest_covers_propagated_values():
    """The digest hashes what readers see (x) as well as what was written (b): a wrong
    propagated value changes it, while equal states still agree."""
    state = mmsb.mmsb_start(semiring="tropical", fsync="never")
    try:
        a, b = (mmsb.create_page(state, size=4, dtype=jnp.float32).id for _ in range(2))
        mmsb.update_page(state, a, jnp.arange(4, dtype=jnp.float32))
        mmsb.update_page(state, b, jnp.full(4, 10.0, jnp.float32))
        mmsb.add_dependency(state, a, b, weight=1.0)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, b)), [1.0, 2.0, 3.0, 4.0])
        digest = mmsb.state_digest(state)
        assert mmsb.state_digest(state) == digest
        pg = state._pool_graphs[state._pools[0].index]
        pg.x = pg.x.at[state._table.slot[b], 0].set(7.0)  # corrupt one derived value only
        assert mmsb.state_digest(state) != digest
    finally:
        mmsb.mmsb_stop(state)


def test_update_page_python_data_takes_the_page_dtype():
    state = mmsb.mmsb_start(fsync="never")
    try:
        u8 = mmsb.create_page(state, size=3, dtype=jnp.uint8).id
        f32 = mmsb.create_page(state, size=3, dtype=jnp.float32).id
        flags = mmsb.create_page(state, shape=(2, 1), dtype=jnp.bool_).id
        assert mmsb.update_page(state, u8, [1, 2, 255]) == 4
        assert np.asarray(mmsb.query_page(state, u8)).tolist() == [1, 2, 255]
        assert mmsb.update_page(state, f32, [0.1, float("nan"), 3]) == 5  # floats round
        assert_bits_equal(mmsb.query_page(state, f32), np.array([0.1, np.nan, 3], np.float32))
        assert mmsb.update_page(state, flags, [[0], [1]]) == 6
        assert mmsb.update_page(state, flags, [[False], [True]]) is None
        before = state_digest_and_epoch(state)
        for pid, data, bad in [(u8, [1, 2, 256], "256"), (u8, [-1, 0, 0], "-1"), (u8, [0.5, 0, 0], "0.5"),
                               (f32, [1e300, 0, 0], "1e+300"), (flags, [[2], [0]], "2")]:
            with pytest.raises(InvalidDeltaError, match=rf"page {pid} holds {re.escape(bad)}, which dtype"):
                mmsb.update_page(state, pid, data)
        # arrays with a dtype of their own are never cast
        with pytest.raises(InvalidDeltaError, match="has dtype int64; expected dtype uint8"):
            mmsb.update_page(state, u8, np.array([1, 2, 3]))
        with pytest.raises(InvalidDeltaError, match="has dtype float64; expected dtype float32"):
            mmsb.update_page(state, f32, np.array([1.0, 2.0, 3.0]))
        assert state_digest_and_epoch(state) == before
    finally:
        mmsb.mmsb_stop(state)


def test_create_page_largest_page_reserves_lazily():
    """A page of 2**31 elements is allowed; creating it reserves one slot, not sixteen, and
    touches no memory until it is read."""
    state = mmsb.mmsb_start(fsync="never")
    try:
        p = mmsb.create_page(state, size=2**31, dtype=jnp.bool_)
        pool = mmsb.get_stats(state)["pools"][0]
        assert (p.size, pool["capacity"], pool["materialized_bytes"]) == (2**31, 1, 0)
    finally:
        mmsb.mmsb_stop(state)


def test_page_ids_as_numpy_and_jax_integer_scalars(populated):
    ids = np.asarray(populated.page_ids())
    want = np.asarray(mmsb.query_page(populated, int(ids[0])))
    for pid in (ids[0], np.int32(ids[0]), np.array(ids[0]), jnp.asarray(ids)[0]):
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(populated, pid)), want)
    for bad, needle in ((jnp.asarray([0, 1]), "Array"), (jnp.float32(0), "Array"), (np.array(True), "True")):
        with pytest.raises(PageNotFoundError, match=needle):
            mmsb.query_page(populated, bad)


def test_start_on_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(InvalidArgumentError, match="exists and is not a directory"):
        mmsb.mmsb_start(f)
    assert f.read_text() == "x"
    with pytest.raises(InvalidArgumentError, match=r"is below .*afile', which is not a directory"):
        mmsb.mmsb_start(f / "below" / "it")  # names the file, not the path asked for
    assert f.read_text() == "x"


def test_stop_refuses_a_checkpoint_inside_the_temporary_directory():
    state = mmsb.mmsb_start(fsync="never")
    p = mmsb.create_page(state, size=2)
    with pytest.raises(InvalidArgumentError, match="inside the temporary state directory"):
        mmsb.mmsb_stop(state, checkpoint_path=f"{state.path}/ckpt")
    assert not state.closed and mmsb.query_page(state, p.id).shape == (2,)  # still open, unchanged
    mmsb.mmsb_stop(state)


def test_query_log_takes_page_handles_and_refuses_bools():
    state = mmsb.mmsb_start(fsync="never")
    try:
        a, b = mmsb.create_page(state, size=2), mmsb.create_page(state, size=2)
        mmsb.update_page(state, b.id, [1, 2])
        assert [r.epoch for r in mmsb.query_log(state, page_id=b)] == [2, 3]
        assert [r.epoch for r in mmsb.query_log(state, page_id=b)] == [2, 3]
        with pytest.raises(PageNotFoundError, match="page_id=True is not a page id"):
            mmsb.query_log(state, page_id=True)
        assert [r.epoch for r in mmsb.query_log(state, page_id=np.int64(a.id))] == [1]
    finally:
        mmsb.mmsb_stop(state)


def test_bfloat16_pages_propagate_and_accumulate():
    state = mmsb.mmsb_start(semiring="real", fsync="never")
    try:
        bf = jnp.bfloat16
        a, b = (mmsb.create_page(state, size=3, dtype=bf).id for _ in range(2))
        mmsb.update_page(state, a, jnp.array([1, 2, 4], bf))
        mmsb.add_dependency(state, a, b, weight=0.5)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, b), np.float32), [0.5, 1, 2])
        mmsb.route_delta(state, b, mmsb.accumulate_delta(jnp.ones(3, bf)))
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(state, b), np.float32), [1.5, 2, 3])
        assert mmsb.semirings.REAL.accepts(bf) and not mmsb.semirings.BOOLEAN.accepts(bf)
    finally:
        mmsb.mmsb_stop(state)


def test_query_log_refuses_bad_epoch_ranges():
    state = mmsb.mmsb_start(fsync="never")
    try:
        mmsb.create_page(state, size=2)
        for bad, needle in (((6, 4), "reversed"), ((-1, 3), "-1"), ((1.5, None), "1.5"), (5, "pair")):
            with pytest.raises(InvalidArgumentError, match=re.escape(needle)):
                mmsb.query_log(state, epochs=bad)
        assert [r.epoch for r in mmsb.query_log(state, epochs=(1, None))] == [1]
    finally:
        mmsb.mmsb_stop(state)
