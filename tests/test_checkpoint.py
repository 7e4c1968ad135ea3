"""Checkpoints: stop + reopen gives the same state; plain orbax arrays; bad directories refused."""

import json
import os
import re
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import assert_bits_equal

import mmsb_jax as mmsb
from mmsb_jax import PageNotFoundError, SerializationError

# --------------------------------------------------------------------------- helpers




def describe(state):
    """Everything observable about the pages: digest, epoch, ids, page epochs, contents."""
    ids = state.page_ids().tolist()
    return {
        "digest": mmsb.state_digest(state),
        "epoch": state.epoch,
        "ids": ids,
        "page_epochs": {i: state.page_epoch(i) for i in ids},
        "contents": {i: np.array(mmsb.query_page(state, i), copy=True) for i in ids},
        "pages": mmsb.get_stats(state)["pages"],
    }


def assert_same(got, want):
    assert got["digest"] == want["digest"]
    assert got["epoch"] == want["epoch"]
    assert got["ids"] == want["ids"]
    assert got["page_epochs"] == want["page_epochs"]
    assert got["pages"] == want["pages"]
    for i in want["ids"]:
        assert_bits_equal(got["contents"][i], want["contents"][i], f"page {i}")


def stop_with_checkpoint(state, path):
    """``mmsb_stop(state, checkpoint_path=path)``; a failure is reported without orbax's traceback
    (pytest's rendering of deep orbax tracebacks can crash on CPython 3.11: an AST recursion
    SystemError that aborts the whole session)."""
    try:
        return mmsb.mmsb_stop(state, checkpoint_path=path)
    except SerializationError as e:
        mmsb.mmsb_stop(state)
        pytest.fail(f"mmsb_stop(checkpoint_path={path!r}) raised {type(e).__name__}: {e}", pytrace=False)


def reopen(path):
    try:
        return mmsb.mmsb_open(path)
    except SerializationError as e:
        pytest.fail(f"mmsb_open({path!r}) raised {type(e).__name__}: {e}", pytrace=False)


def build_state():
    """Pages in three pools (1-D int32, 2-D float32 with NaN/-0.0, bool), writes of every kind,
    and deleted pages (ids 1 and 4), so slots are free in the middle of a pool."""
    s = mmsb.mmsb_start()
    ids = mmsb.create_pages(s, 4, size=5, dtype=jnp.int32)  # 0..3
    f = mmsb.create_page(s, shape=(2, 3), dtype=jnp.float32)  # 4
    g = mmsb.create_page(s, shape=(2, 3), dtype=jnp.float32)  # 5
    b = mmsb.create_page(s, size=3, dtype=jnp.bool_)  # 6
    for i in ids.tolist():
        mmsb.update_page(s, i, np.arange(5, dtype=np.int32) * (i + 1) - 7)
    mmsb.update_page(s, g.id, np.array([[np.nan, -0.0, 1.5], [np.inf, -2.0, 3e38]], np.float32))
    mmsb.route_delta(s, int(ids[2]), mmsb.sparse_delta([4, 0, 4], jnp.array([11, 12, 13], jnp.int32), 5))
    mmsb.batch_route_deltas(
        s,
        [
            (g.id, mmsb.accumulate_delta(jnp.ones((2, 3), jnp.float32))),
            (b.id, mmsb.dense_delta(jnp.array([True, False, True]), jnp.array([True, True, True]))),
        ],
    )
    mmsb.route_sparse_batch(s, np.array([0, 3]), np.array([[1, 2], [2, 2]]), np.array([[100, 101], [102, 103]], np.int32))
    mmsb.delete_page(s, 1)
    mmsb.delete_page(s, f.id)
    return s


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One checkpoint written by mmsb_stop, and what the state looked like before."""
    s = build_state()
    before = describe(s)
    path = str(tmp_path_factory.mktemp("ckpt") / "ck")
    assert stop_with_checkpoint(s, path) == path
    assert s.closed
    return path, before


@pytest.fixture
def copy_of(saved, tmp_path):
    """A fresh copy of the saved checkpoint directory (to damage or reopen and write to)."""
    path, before = saved
    dst = str(tmp_path / "copy")
    shutil.copytree(path, dst, ignore=shutil.ignore_patterns("log"))
    return dst, before


# --------------------------------------------------------------------------- round trip
def test_stop_then_open_gives_the_same_state(copy_of):
    path, before = copy_of
    s = reopen(path)
    try:
        assert_same(describe(s), before)
        with pytest.raises(PageNotFoundError):
            mmsb.query_page(s, 1)  # deleted before the checkpoint: stays deleted
    finally:
        mmsb.mmsb_stop(s)


def test_reopened_state_is_writable_and_ids_do_not_collide(copy_of):
    path, before = copy_of
    s = reopen(path)
    try:
        e = before["epoch"]
        assert mmsb.update_page(s, 0, np.full(5, 9, np.int32)) == e + 1
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, 0)), np.full(5, 9))
        # new ids continue after the highest id ever handed out (7 pages were created)
        p = mmsb.create_page(s, size=5, dtype=jnp.int32)
        assert p.id == 7 and s.epoch == e + 2
        # it takes the freed slot of page 1, which reads as zeros; other pages are untouched
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, p.id)), np.zeros(5, np.int32))
        for i in (2, 3):
            assert_bits_equal(mmsb.query_page(s, i), before["contents"][i])
        ids = mmsb.create_pages(s, 3, shape=(2, 3), dtype=jnp.float32)
        assert ids.tolist() == [8, 9, 10]
        for i in ids.tolist():
            np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, i)), np.zeros((2, 3), np.float32))
        assert_bits_equal(mmsb.query_page(s, 5), before["contents"][5])
        mmsb.route_sparse_batch(s, np.array([8, 5]), np.array([[0], [5]]), np.array([[1.0], [2.0]], np.float32))
        want5 = before["contents"][5].copy()
        want5.reshape(-1)[5] = 2.0
        assert_bits_equal(mmsb.query_page(s, 5), want5)
        assert s.page_epoch(8) == s.page_epoch(5) == e + 4
        assert sorted(s.page_ids().tolist()) == sorted(before["ids"] + [7, 8, 9, 10])
        assert mmsb.get_stats(s)["pages"] == len(before["ids"]) + 4
    finally:
        mmsb.mmsb_stop(s)


def test_checkpoint_roundtrip_twice(copy_of, tmp_path):
    """open -> write -> stop with a new checkpoint -> open again: still equal."""
    path, _ = copy_of
    s = reopen(path)
    mmsb.route_delta(s, 2, mmsb.dense_delta(jnp.ones(5, bool), jnp.arange(5, dtype=jnp.int32)))
    mmsb.delete_page(s, 3)
    before = describe(s)
    second = str(tmp_path / "second")
    stop_with_checkpoint(s, second)
    s2 = reopen(second)
    try:
        assert_same(describe(s2), before)
    finally:
        mmsb.mmsb_stop(s2)


# --------------------------------------------------------------------------- plain orbax
def test_arrays_restore_with_orbax_alone(saved):
    path, before = saved
    tree = ocp.StandardCheckpointer().restore(os.path.join(path, "arrays"))
    with open(os.path.join(path, "manifest.json")) as f:
        layout = {e["key"]: e for e in json.load(f)["tables"]}
    packed = np.asarray(tree["tables"])  # the small arrays, as the manifest's "tables" lists them

    def unpack(key):
        e = layout[key]
        size = int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize
        return packed[e["offset"]: e["offset"] + size].view(e["dtype"]).reshape(e["shape"])

    pools, table = tree["pools"], {c: unpack(f"page_table/{c}") for c in ("id", "pool", "slot", "epoch")}
    assert sorted(tree) == ["pools", "tables"] and unpack("epoch").tolist() == [before["epoch"]]
    assert sorted(pools) == ["pool_0", "pool_1", "pool_2"]
    specs = {"pool_0": ((5,), np.int32), "pool_1": ((2, 3), np.float32), "pool_2": ((3,), np.bool_)}
    for name, (shape, dtype) in specs.items():
        arr = np.asarray(pools[name])
        assert arr.shape[1:] == shape and arr.dtype == dtype
    ids = np.asarray(table["id"]).tolist()
    assert ids == before["ids"]
    for i, pool, slot, epoch in zip(ids, np.asarray(table["pool"]), np.asarray(table["slot"]), np.asarray(table["epoch"])):
        assert_bits_equal(np.asarray(pools[f"pool_{int(pool)}"])[int(slot)], before["contents"][i], f"page {i}")
        assert int(epoch) == before["page_epochs"][i]


def test_manifest_is_json_with_epoch(saved):
    path, before = saved
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["epoch"] == before["epoch"]
    assert manifest["next_page_id"] == 7


def test_version_2_checkpoints_still_open(tmp_path, monkeypatch):
    """A checkpoint written before the small arrays were packed (version 2: each its own orbax
    array) opens as it did, trees and dependencies included."""
    from mmsb_jax.log import _checkpoint

    s = mmsb.mmsb_start(tmp_path / "s")
    a, b = (int(i) for i in mmsb.create_pages(s, 2, size=4, dtype=jnp.float32))
    mmsb.add_dependency(s, a, b, weight=2.0)
    mmsb.update_page(s, a, np.arange(4, dtype=np.float32))
    mmsb.save_tree(s, "t", {"w": np.ones(3, np.float32), "n": np.int32(1)}, step=5)
    digest = mmsb.state_digest(s)
    with monkeypatch.context() as m:  # written as version 2 did
        m.setattr(_checkpoint, "VERSION", 2)
        m.setattr(_checkpoint, "packed", lambda tree, manifest: (tree, manifest))
        old = mmsb.checkpoint(s, tmp_path / "v2")
    mmsb.mmsb_stop(s)
    tree = ocp.StandardCheckpointer().restore(os.path.join(old, "arrays"))
    assert "page_table" in tree and "tables" not in tree and json.loads(_read(old))["version"] == 2
    reopened = mmsb.mmsb_open(old)
    assert mmsb.state_digest(reopened) == digest and reopened.recovery_report.skipped_checkpoints == []
    assert mmsb.load_tree(reopened, "t")["n"] == 1 and mmsb.tree_steps(reopened, "t") == [(5, 4)]
    reopened.close()


BAD_LAYOUTS = {
    "not a list": ({"key": "epoch"}, "is not a list"),
    "missing field": ([{"key": "epoch", "dtype": "int64", "shape": [1]}], "is not {key, dtype, shape, offset}"),
    "past the end": ([{"key": "epoch", "dtype": "int64", "shape": [1], "offset": 16}], "does not lie in order"),
    "a huge shape": ([{"key": "epoch", "dtype": "int64", "shape": [2**40], "offset": 0}], "does not lie in order"),
    "two axes, one of them 0": ([{"key": "epoch", "dtype": "int64", "shape": [0, 2**70], "offset": 0}], "not [n]"),
    "overlapping": ([{"key": "page_table/id", "dtype": "int64", "shape": [2], "offset": 0},
                     {"key": "page_table/slot", "dtype": "int64", "shape": [1], "offset": 8}], "does not lie in order"),
    "unaligned": ([{"key": "trees/tree_0/structure", "dtype": "uint8", "shape": [1], "offset": 3}],
                  "does not lie in order"),
    "negative shape": ([{"key": "epoch", "dtype": "int64", "shape": [-1], "offset": 0}], "has shape"),
    "unknown dtype": ([{"key": "epoch", "dtype": "object", "shape": [1], "offset": 0}], "has dtype 'object'"),
    "a dtype of the same size swapped": ([{"key": "graph/weight", "dtype": "int64", "shape": [1], "offset": 0}],
                                         "a checkpoint writes it as float64"),
    "a pool's key": ([{"key": "pools/pool_0", "dtype": "int64", "shape": [1], "offset": 0}], "entry key"),
    "a path key": ([{"key": "../x", "dtype": "int64", "shape": [1], "offset": 0}], "entry key"),
    "an unknown key": ([{"key": "page_table/owner", "dtype": "int64", "shape": [1], "offset": 0}], "entry key"),
    "listed twice": ([{"key": "epoch", "dtype": "int64", "shape": [1], "offset": 0},
                      {"key": "epoch", "dtype": "int64", "shape": [1], "offset": 8}], "listed twice"),
}


@pytest.mark.parametrize("case", list(BAD_LAYOUTS))
def test_packed_tables_never_trust_the_layout(case):
    """The manifest's layout of the packed arrays is checked against the packed bytes: an
    entry outside them, overlapping another, or naming an unknown dtype is refused, named."""
    from mmsb_jax.log._tables import unpack_tables

    layout, needle = BAD_LAYOUTS[case]
    with pytest.raises(SerializationError, match=re.escape(needle)):
        unpack_tables({"tables": np.zeros(16, np.uint8)}, layout, "ck")


def test_packed_tables_round_trip_every_array_a_checkpoint_packs():
    from mmsb_jax.log._tables import pack_tables, unpack_tables

    rng = np.random.default_rng(0)
    tree = {"pools": {"pool_0": np.ones((2, 3), np.float32)}, "epoch": np.array([9], np.int64),
            "page_table": {"id": np.arange(3), "pool": np.arange(3, dtype=">i4"), "slot": np.arange(3),
                           "epoch": np.arange(1, 4)},
            "graph": {"parent": np.arange(2), "child": np.arange(1, 3), "weight": rng.standard_normal(2),
                      "type": np.zeros(2, np.int32)},
            "trees": {"tree_0": {"structure": np.arange(7, dtype=np.uint8), "steps": np.zeros(0, np.int64),
                                 "epochs": np.zeros(0, np.int64)}}}
    packed, layout = pack_tables(tree)
    assert sorted(packed) == ["pools", "tables"] and packed["pools"] is tree["pools"]
    back = unpack_tables(packed, layout, "ck")
    for group in ("page_table", "graph"):
        for key, want in tree[group].items():
            got = back[group][key]
            assert got.shape == want.shape and np.array_equal(got, want) and got.dtype == want.dtype.newbyteorder("="), key
    assert back["epoch"].tolist() == [9] and back["trees"]["tree_0"]["structure"].tolist() == list(range(7))
    assert back["trees"]["tree_0"]["steps"].shape == (0,)


# --------------------------------------------------------------------------- empty states
def test_checkpoint_of_a_state_without_live_pages(tmp_path):
    s = mmsb.mmsb_start()
    ids = mmsb.create_pages(s, 2, size=4, dtype=jnp.float32)
    for i in ids.tolist():
        mmsb.delete_page(s, i)
    before = describe(s)
    path = str(tmp_path / "ck")
    stop_with_checkpoint(s, path)
    s2 = reopen(path)
    try:
        assert_same(describe(s2), before)
        assert mmsb.create_page(s2, size=4, dtype=jnp.float32).id == 2
    finally:
        mmsb.mmsb_stop(s2)


def test_checkpoint_of_a_fresh_state(tmp_path):
    s = mmsb.mmsb_start()
    before = describe(s)
    path = str(tmp_path / "ck")
    stop_with_checkpoint(s, path)
    s2 = reopen(path)
    try:
        assert_same(describe(s2), before)
    finally:
        mmsb.mmsb_stop(s2)


# --------------------------------------------------------------------------- bad directories
def _read(path, name="manifest.json"):
    with open(os.path.join(path, name), "rb") as f:
        return f.read()


def _write(path, data: bytes, name="manifest.json"):
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


def _garbage(path):
    with open(os.path.join(path, "manifest.json"), "wb") as f:
        f.write(b"\x00\xff not json \x13")


def _truncate(path):
    raw = _read(path)
    _write(path, raw[: len(raw) // 2])


def _edit(**changes):
    def edit(path):
        p = os.path.join(path, "manifest.json")
        with open(p) as f:
            m = json.load(f)
        for k, v in changes.items():
            if v is _DROP:
                m.pop(k)
            else:
                m[k] = v
        with open(p, "w") as f:
            json.dump(m, f)

    return edit


_DROP = object()


def _shape_mismatch(path):
    p = os.path.join(path, "manifest.json")
    with open(p) as f:
        m = json.load(f)
    m["pools"][0]["shape"] = [7]
    with open(p, "w") as f:
        json.dump(m, f)


DAMAGE = {
    "missing-manifest": lambda p: os.remove(os.path.join(p, "manifest.json")),
    "garbage-manifest": _garbage,
    "truncated-manifest": _truncate,
    "empty-manifest": lambda p: _write(p, b""),
    "manifest-is-a-list": lambda p: _write(p, b"[1, 2]"),
    "wrong-format": _edit(format="something-else"),
    "wrong-version": _edit(version=99),
    "no-pools": _edit(pools=_DROP),
    "no-next-page-id": _edit(next_page_id=_DROP),
    "epoch-not-int": _edit(epoch="seven"),
    "pool-shape-mismatch": _shape_mismatch,
    "missing-arrays": lambda p: shutil.rmtree(os.path.join(p, "arrays")),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=str)
def test_damaged_checkpoint_raises_serialization_error(copy_of, damage):
    path, _ = copy_of
    DAMAGE[damage](path)
    with pytest.raises(SerializationError) as ei:
        s = mmsb.mmsb_open(path)
        mmsb.mmsb_stop(s)  # not reached when the library is right
    assert os.path.basename(path) in str(ei.value)


def test_checkpoint_into_a_directory_that_holds_one(saved, tmp_path):
    path, _ = saved
    manifest = _read(path)
    s = mmsb.mmsb_start()
    try:
        p = mmsb.create_page(s, size=4, dtype=jnp.float32)
        mmsb.update_page(s, p.id, np.ones(4, np.float32))
        before = (mmsb.state_digest(s), s.epoch)
        with pytest.raises(SerializationError) as ei:
            mmsb.checkpoint(s, path)
        assert path in str(ei.value)
        with pytest.raises(SerializationError):
            mmsb.mmsb_stop(s, checkpoint_path=path)
        assert (mmsb.state_digest(s), s.epoch) == before
        assert _read(path) == manifest  # untouched
    finally:
        mmsb.mmsb_stop(s)


def _listing(root):
    return sorted((os.path.relpath(d, root), tuple(sorted(fs))) for d, _, fs in os.walk(root))


@pytest.mark.parametrize("where", ["state root", "log", "other files", "below a file", "a file named arrays",
                                   "a link named arrays", "names like a leftover"])
@pytest.mark.parametrize("block", [True, False])
def test_checkpoint_refuses_a_directory_it_would_write_among(tmp_path, where, block):
    """A checkpoint goes into a new or an empty directory: never among a state's files (its
    root, its log) or anyone else's, nor below a file; refused at the call, nothing written."""
    s = mmsb.mmsb_start(tmp_path / "s")
    p = mmsb.create_page(s, size=4, dtype=jnp.float32)
    mmsb.update_page(s, p.id, np.ones(4, np.float32))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    (tmp_path / "afile").write_text("x")
    target, needle = {
        "state root": (tmp_path / "s", r"is not empty \(it holds 'log', 'mmsb-state.json'"),
        "log": (tmp_path / "s" / "log", "is not empty"),
        "other files": (tmp_path / "mine", "is not empty \\(it holds 'notes.txt'\\)"),
        "below a file": (tmp_path / "afile" / "ckpt", "is below .*afile', which is not a directory"),
        "a file named arrays": (tmp_path / "f", "is not empty \\(it holds 'arrays'\\)"),
        "a link named arrays": (tmp_path / "l", "is not empty \\(it holds 'arrays'\\)"),
        "names like a leftover": (tmp_path / "u", "it holds 'arrays.bak', 'manifest.json.orig'"),
    }[where]
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "arrays").write_text("x")
    (tmp_path / "l").mkdir()
    os.symlink(tmp_path / "mine", tmp_path / "l" / "arrays")  # rmtree of it would fail, or worse
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "arrays.bak").mkdir()
    (tmp_path / "u" / "manifest.json.orig").write_text("{}")
    before, files = (mmsb.state_digest(s), s.epoch), _listing(tmp_path)
    try:
        with pytest.raises(SerializationError, match=needle):
            mmsb.checkpoint(s, target, block=block)
        assert (mmsb.state_digest(s), s.epoch) == before and _listing(tmp_path) == files
    finally:
        mmsb.mmsb_stop(s)  # no background failure is left to report
    reopened = mmsb.mmsb_open(tmp_path / "s")
    assert mmsb.state_digest(reopened) == before[0]
    reopened.close()


@pytest.mark.parametrize("block", [True, False])
def test_checkpoint_into_a_path_that_cannot_be_made_is_refused_at_the_call(tmp_path, block):
    s = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_page(s, size=4, dtype=jnp.float32)
    before = (mmsb.state_digest(s), s.epoch)
    for bad in ("/proc/mmsb-no/ckpt", str(tmp_path / ("x" * 300))):
        with pytest.raises(SerializationError, match="cannot create the checkpoint directory"):
            mmsb.checkpoint(s, bad, block=block)
    assert (mmsb.state_digest(s), s.epoch) == before
    mmsb.checkpoint(s)  # no background failure left to report
    mmsb.mmsb_stop(s)


def test_checkpoint_into_an_empty_or_crashed_directory(tmp_path):
    """An empty directory, and one a crashed attempt left (arrays, no manifest), are taken."""
    s = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_page(s, size=4, dtype=jnp.float32)
    (tmp_path / "empty").mkdir()
    assert mmsb.checkpoint(s, tmp_path / "empty") == str(tmp_path / "empty")
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "empty", crashed)
    os.remove(crashed / "manifest.json")
    assert mmsb.checkpoint(s, crashed) == str(crashed)
    digest = mmsb.state_digest(s)
    mmsb.mmsb_stop(s)
    for d in ("empty", "crashed"):
        r = mmsb.mmsb_open(tmp_path / d)
        assert mmsb.state_digest(r) == digest
        r.close()


def test_open_empty_or_missing_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SerializationError) as ei:
        mmsb.mmsb_open(empty)
    assert "empty" in str(ei.value)
    with pytest.raises(SerializationError):
        mmsb.mmsb_open(tmp_path / "does-not-exist")


def test_start_refuses_a_directory_holding_a_checkpoint(saved):
    path, _ = saved
    with pytest.raises(SerializationError) as ei:
        mmsb.mmsb_start(path=path)
    assert path in str(ei.value)


def test_open_state_directory_uses_newest_checkpoint(tmp_path):
    d = str(tmp_path / "state")
    s = mmsb.mmsb_start(path=d)
    p = mmsb.create_page(s, size=3, dtype=jnp.int32)
    mmsb.update_page(s, p.id, np.array([1, 2, 3], np.int32))
    first = mmsb.checkpoint(s)
    mmsb.update_page(s, p.id, np.array([4, 5, 6], np.int32))
    q = mmsb.create_page(s, shape=(2, 2), dtype=jnp.float32)
    second = mmsb.checkpoint(s)
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    before = describe(s)
    mmsb.mmsb_stop(s)
    assert os.path.isdir(d)  # a state with an explicit path keeps its directory
    s2 = reopen(d)
    try:
        assert_same(describe(s2), before)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s2, p.id)), [4, 5, 6])
        assert mmsb.create_page(s2, size=1).id == q.id + 1
    finally:
        mmsb.mmsb_stop(s2)


def test_checkpoint_after_create_pages_zero(tmp_path):
    """create_pages(n=0) of a new spec must not leave the state unable to checkpoint."""
    s = mmsb.mmsb_start()
    mmsb.create_page(s, size=3, dtype=jnp.float32)
    mmsb.create_pages(s, 0, size=7, dtype=jnp.int32)
    before = describe(s)
    path = str(tmp_path / "ck")
    stop_with_checkpoint(s, path)
    s2 = reopen(path)
    try:
        assert_same(describe(s2), before)
    finally:
        mmsb.mmsb_stop(s2)


def test_reopen_from_the_log_equals_the_live_state(tmp_path):
    """A state directory reopened from its log alone has the live state's digest."""
    d = str(tmp_path / "state")
    s = mmsb.mmsb_start(path=d)
    a = mmsb.create_page(s, size=3, dtype=jnp.float32)
    mmsb.create_pages(s, 0, size=7, dtype=jnp.int32)  # commits nothing
    b = mmsb.create_page(s, size=2, dtype=jnp.uint8)
    mmsb.update_page(s, b.id, np.array([1, 2], np.uint8))
    mmsb.update_page(s, a.id, np.array([1.0, np.nan, -0.0], np.float32))
    before = describe(s)
    mmsb.mmsb_stop(s)
    s2 = reopen(d)
    try:
        assert_same(describe(s2), before)
    finally:
        mmsb.mmsb_stop(s2)


def test_reopen_checkpoint_plus_log_tail(copy_of):
    """Writes after reopening a checkpoint directory survive a stop without a new checkpoint."""
    path, _ = copy_of
    s = reopen(path)
    mmsb.update_page(s, 0, np.full(5, 3, np.int32))
    q = mmsb.create_page(s, size=2, dtype=jnp.uint8)
    mmsb.route_sparse_batch(s, np.array([q.id, q.id]), np.array([[1], [1]]), np.array([[5], [6]], np.uint8))
    mmsb.delete_page(s, 2)
    before = describe(s)
    mmsb.mmsb_stop(s)
    s2 = reopen(path)
    try:
        assert_same(describe(s2), before)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s2, q.id)), [0, 6])
    finally:
        mmsb.mmsb_stop(s2)


def test_checkpoint_keeps_the_semiring(tmp_path):
    s = mmsb.mmsb_start(semiring="tropical")
    mmsb.create_page(s, size=2, dtype=jnp.float32)
    path = str(tmp_path / "ck")
    stop_with_checkpoint(s, path)
    s2 = reopen(path)
    try:
        assert mmsb.get_stats(s2)["semiring"] == "tropical"
    finally:
        mmsb.mmsb_stop(s2)
