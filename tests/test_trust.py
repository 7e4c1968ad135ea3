"""Issue #10: nothing a caller or a damaged file can do leaves a state unopenable or silently
wrong. One test (or parametrized family) per defect found; each failed before its fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import PEAK_RESET

import mmsb_jax as mmsb
from mmsb_jax import (
    CorruptLogError,
    InvalidArgumentError,
    InvalidDeltaError,
    MMSBError,
    ResourceLimitError,
    SerializationError,
)
from mmsb_jax.log import TLog, list_segments, read_records
from mmsb_jax.log._checkpoint import MANIFEST
from mmsb_jax.log._files import write_checked_json

F32 = np.float32


def _small_state(path, semiring="real"):
    """Epochs 1-6: two float32 pages, one int32 page, writes, a checkpoint at epoch 5."""
    s = mmsb.mmsb_start(path, semiring=semiring)
    a = mmsb.create_page(s, size=4, dtype=jnp.float32)  # 1
    b = mmsb.create_page(s, size=4, dtype=jnp.float32)  # 2
    c = mmsb.create_page(s, size=4, dtype=jnp.int32)  # 3
    mmsb.update_page(s, a.id, np.arange(4, dtype=F32))  # 4
    mmsb.update_page(s, c.id, np.arange(4, dtype=np.int32))  # 5
    mmsb.checkpoint(s)
    mmsb.update_page(s, b.id, np.full(4, 2.5, F32))  # 6
    return s, (a.id, b.id, c.id)


def _reopen_digest(path):
    s = mmsb.mmsb_open(path)
    try:
        return mmsb.state_digest(s), s.epoch
    finally:
        s.close()


# --------------------------------------------------------------------------- 1. 64-bit payloads
BAD_64 = {
    "dense-float64": lambda ids: (ids[0], mmsb.DenseDelta(np.ones(4, bool), np.full(4, 1.5))),
    "sparse-float64": lambda ids: (ids[0], mmsb.SparseDelta(np.array([0, 1]), np.array([2.5, 3.5]), (4,))),
    "sparse-int64-on-int32": lambda ids: (ids[2], mmsb.SparseDelta(np.array([0]), np.array([7]), (4,))),
    "accumulate-float64": lambda ids: (ids[0], mmsb.AccumulateDelta(np.ones(4), mmsb.semirings.REAL)),
    "dense-mask-int": lambda ids: (ids[0], mmsb.DenseDelta(np.ones(4, np.int8), np.ones(4, F32))),
}


@pytest.mark.parametrize("case", list(BAD_64))
@pytest.mark.parametrize("how", ["route_delta", "batch_route_deltas"])
def test_64_bit_numpy_payloads_are_refused_and_the_state_reopens(tmp_path, case, how):
    s, ids = _small_state(tmp_path / "s")
    before = mmsb.state_digest(s)
    pid, delta = BAD_64[case](ids)
    call = (lambda: mmsb.route_delta(s, pid, delta)) if how == "route_delta" else (
        lambda: mmsb.batch_route_deltas(s, [(ids[1], mmsb.sparse_delta([0], jnp.ones(1, jnp.float32), 4)), (pid, delta)])
    )
    with pytest.raises(InvalidDeltaError, match="dtype|int8"):
        call()
    assert mmsb.state_digest(s) == before and s.epoch == 6
    # what is accepted replays: the same delta in the page's own dtype
    good = mmsb.DenseDelta(np.ones(4, bool), np.full(4, 1.5, F32))
    assert mmsb.route_delta(s, ids[0], good) == 7
    live = mmsb.state_digest(s)
    s.close()
    assert _reopen_digest(tmp_path / "s") == (live, 7)
    assert mmsb.verify_state(tmp_path / "s")["ok"]


def test_sparse_batch_of_float64_values_on_float32_pages(tmp_path):
    s, ids = _small_state(tmp_path / "s")
    before = mmsb.state_digest(s)
    with pytest.raises(InvalidDeltaError, match="float64"):
        mmsb.route_sparse_batch(s, [ids[0]], [[0]], np.array([[1.5]]))
    assert mmsb.state_digest(s) == before
    # plain Python lists take the pages' dtype (as update_page's do)
    assert mmsb.route_sparse_batch(s, [ids[0], ids[1]], [[0, 1], [2, 3]], [[1.5, 2.5], [3.5, 4.5]]) == 7
    assert mmsb.query_page(s, ids[1]).tolist() == [2.5, 2.5, 3.5, 4.5]
    with pytest.raises(InvalidDeltaError, match="several dtypes"):
        mmsb.route_sparse_batch(s, [ids[0], ids[2]], [[0], [0]], [[1], [2]])
    with pytest.raises(InvalidDeltaError, match="cannot represent"):
        mmsb.route_sparse_batch(s, [ids[2]], [[0]], [[2**40]])
    with pytest.raises(InvalidDeltaError, match="holds 18446744073709551616, which dtype float32 cannot represent"):
        mmsb.update_page(s, ids[0], [2**64, 1, 2, 3])  # past 64 bits: named, not "dtype object"
    s.close()


# --------------------------------------------------------------------------- 2. tracers
def _traced_calls(s, ids):
    a, b, c = ids
    return {
        "vmap update_page": lambda: jax.vmap(lambda x: mmsb.update_page(s, a, x))(jnp.ones((2, 4), jnp.float32)),
        "jit update_page": lambda: jax.jit(lambda x: mmsb.update_page(s, a, x))(jnp.ones(4, jnp.float32)),
        "grad update_page": lambda: jax.grad(lambda x: (mmsb.update_page(s, a, x), x.sum())[1])(jnp.ones(4, jnp.float32)),
        "vmap route_delta": lambda: jax.vmap(
            lambda v: mmsb.route_delta(s, a, mmsb.SparseDelta(jnp.array([0], jnp.int32), v[None], (4,)))
        )(jnp.ones(2, jnp.float32)),
        "jit dense route_delta": lambda: jax.jit(
            lambda m: mmsb.route_delta(s, a, mmsb.DenseDelta(m, jnp.ones(4, jnp.float32)))
        )(jnp.ones(4, bool)),
        "jit batch": lambda: jax.jit(
            lambda v: mmsb.batch_route_deltas(s, [(a, mmsb.SparseDelta(jnp.array([1], jnp.int32), v, (4,)))])
        )(jnp.ones(1, jnp.float32)),
        "jit sparse batch": lambda: jax.jit(
            lambda v: mmsb.route_sparse_batch(s, np.array([a]), np.array([[0]]), v)
        )(jnp.ones((1, 1), jnp.float32)),
        "jit page id": lambda: jax.jit(lambda i: mmsb.update_page(s, i, np.ones(4, F32)))(jnp.int32(a)),
        "jit query_page": lambda: jax.jit(lambda i: mmsb.query_page(s, i))(jnp.int32(a)),
    }


def test_traced_values_are_refused_before_anything_changes(tmp_path):
    s, ids = _small_state(tmp_path / "s")
    before = mmsb.state_digest(s)
    for name, call in _traced_calls(s, ids).items():
        with pytest.raises(InvalidArgumentError, match="traced") as e:
            call()
        assert isinstance(e.value, MMSBError), name
        assert mmsb.state_digest(s) == before and s.epoch == 6, name
    # the live state still works in every way after all that
    assert mmsb.update_page(s, ids[0], np.full(4, 7, F32)) == 7
    assert mmsb.query_page(s, ids[0]).tolist() == [7.0] * 4
    live = mmsb.state_digest(s)
    s.close()
    assert _reopen_digest(tmp_path / "s") == (live, 7)


# --------------------------------------------------------------------------- 3. checkpoints at once
def test_a_checkpoint_while_a_background_one_runs(tmp_path):
    """f = checkpoint(block=False); update; checkpoint(): failed 5 of 12 times (File exists,
    OCDBT NOT_FOUND) or hung for 300 s, because two orbax saves ran at once."""
    s = mmsb.mmsb_start(tmp_path / "s")
    ids = mmsb.create_pages(s, 500, size=1024)
    for trial in range(6):
        f = mmsb.checkpoint(s, block=False)
        mmsb.update_page(s, int(ids[trial]), np.full(1024, trial + 1, np.uint8))
        out = mmsb.checkpoint(s)
        assert os.path.isfile(os.path.join(f.result(timeout=120), MANIFEST)) and os.path.isfile(os.path.join(out, MANIFEST))
    digest = mmsb.state_digest(s)
    s.close()
    assert _reopen_digest(tmp_path / "s")[0] == digest
    assert mmsb.verify_state(tmp_path / "s")["ok"]


def test_keep_checkpoints(tmp_path):
    s = mmsb.mmsb_start(tmp_path / "s", keep_checkpoints=2)
    p = mmsb.create_page(s, size=4, dtype=jnp.float32)
    for i in range(5):
        mmsb.update_page(s, p.id, np.full(4, i + 1, F32))  # epochs 2..6
        mmsb.checkpoint(s, block=bool(i % 2))
    s.wait_for_checkpoints()
    mmsb.checkpoint(s)  # collects the finished background ones (pruning runs on the caller's thread)
    names = sorted(os.listdir(tmp_path / "s" / "checkpoints"))
    assert names == [f"epoch-{5:012d}", f"epoch-{6:012d}"]
    digest = mmsb.state_digest(s)
    s.close()
    assert _reopen_digest(tmp_path / "s")[0] == digest
    with pytest.raises(InvalidArgumentError, match="keep_checkpoints"):
        mmsb.mmsb_start(keep_checkpoints=0)


# --------------------------------------------------------------------------- 4. reordered records
def _swap_last_two_records(path):
    recs = read_records(path / "log", "absolute", include_commit=True).records
    seg = list_segments(path / "log")[-1][1]
    data = seg.read_bytes()
    a, b = recs[-2].offset, recs[-1].offset
    seg.write_bytes(data[:a] + data[b:] + data[a:b])


def test_swapped_records_are_refused_on_open_and_by_verify(tmp_path):
    s, _ = _small_state(tmp_path / "s")
    mmsb.update_page(s, 0, np.full(4, 9, F32))  # 7
    s.close()
    _swap_last_two_records(tmp_path / "s")
    with pytest.raises(CorruptLogError, match="out of order") as e:
        mmsb.mmsb_open(tmp_path / "s")
    assert e.value.path.endswith(".mmsblog") and e.value.offset > 0
    rep = mmsb.verify_state(tmp_path / "s")
    assert not rep["ok"] and any("out of order" in f for f in rep["faults"])


# --------------------------------------------------------------------------- 5. edited metadata
def _edit_json(file, **changes):
    obj = json.loads(open(file).read())
    obj.update(changes)
    with open(file, "w") as f:
        json.dump(obj, f)


def _edit_json_with_crc(file, **changes):
    """An edit that also recomputes the checksum: only the cross-checks can catch it."""
    obj = json.loads(open(file).read())
    obj.pop("crc32c")
    obj.update(changes)
    write_checked_json(file, obj)


def _pool_edit(which):
    def edit(m):
        m["pools"][0][which] = 10**9
        return {"pools": m["pools"]}

    return edit


EDITS = {
    "epoch+1": lambda m: {"epoch": m["epoch"] + 1},
    "epoch=1e6": lambda m: {"epoch": 10**6},
    "next_page_id=1e12": lambda m: {"next_page_id": 10**12},
    "high_water=1e9": _pool_edit("high_water"),
    "semiring": lambda m: {"semiring": "tropical"},
}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("crc", [False, True], ids=["plain-edit", "crc-recomputed"])
def test_edited_checkpoint_manifest_is_never_trusted(tmp_path, edit, crc):
    s, _ = _small_state(tmp_path / "s")
    live = mmsb.state_digest(s)
    s.close()
    ck = tmp_path / "s" / "checkpoints" / f"epoch-{5:012d}"
    m = json.loads((ck / MANIFEST).read_text())
    (_edit_json_with_crc if crc else _edit_json)(ck / MANIFEST, **EDITS[edit](m))
    # the log is whole: opening passes over the checkpoint (and says so) or refuses; never wrong
    try:
        got = mmsb.mmsb_open(tmp_path / "s")
    except SerializationError as e:
        assert "epoch-000000000005" in str(e) or "semiring" in str(e)
    else:
        try:
            assert mmsb.state_digest(got) == live and got.epoch == 6
            assert [d for d, _ in got.recovery_report.skipped_checkpoints] == [str(ck)]
        finally:
            got.close()
    rep = mmsb.verify_state(tmp_path / "s")
    assert not rep["ok"] and any("epoch-000000000005" in f or "semiring" in f for f in rep["faults"])
    if crc and edit == "semiring":
        return  # alone, a checkpoint that says "tropical" with a valid checksum is a tropical one
    ck_only = tmp_path / "alone"  # without a log to fall back on, the checkpoint is refused
    shutil.copytree(ck, ck_only)
    with pytest.raises(SerializationError):
        mmsb.mmsb_open(ck_only).close()
    assert not mmsb.verify_state(ck_only)["ok"]


@pytest.mark.parametrize("crc", [False, True], ids=["plain-edit", "crc-recomputed"])
def test_edited_semiring_in_the_state_file(tmp_path, crc):
    s, _ = _small_state(tmp_path / "s", semiring="tropical")
    s.close()
    (_edit_json_with_crc if crc else _edit_json)(tmp_path / "s" / "mmsb-state.json", semiring="real")
    with pytest.raises(SerializationError, match="checksum|disagree"):
        mmsb.mmsb_open(tmp_path / "s")
    assert not mmsb.verify_state(tmp_path / "s")["ok"]
    # with no checkpoint to disagree, a recomputed checksum is the only way to edit it: the
    # edit of a plain file is still refused
    shutil.rmtree(tmp_path / "s" / "checkpoints")
    if not crc:
        with pytest.raises(SerializationError, match="checksum"):
            mmsb.mmsb_open(tmp_path / "s")


def test_a_log_without_its_settings_file_is_refused(tmp_path):
    s, _ = _small_state(tmp_path / "s", semiring="tropical")
    s.close()
    shutil.rmtree(tmp_path / "s" / "checkpoints")
    os.unlink(tmp_path / "s" / "mmsb-state.json")
    with pytest.raises(SerializationError, match="semiring .* is unknown"):
        mmsb.mmsb_open(tmp_path / "s")


# --------------------------------------------------------------------------- 6. damaged checkpoint
def test_a_damaged_checkpoint_does_not_block_a_full_log(tmp_path):
    s, ids = _small_state(tmp_path / "s")
    live = mmsb.state_digest(s)
    at5 = mmsb.state_digest(mmsb.replay_to_epoch(s, 5))
    s.close()
    ck = tmp_path / "s" / "checkpoints" / f"epoch-{5:012d}"
    big = max((p for p in ck.rglob("*") if p.is_file() and "manifest" not in p.name), key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0xFF
    big.write_bytes(bytes(data))
    got = mmsb.mmsb_open(tmp_path / "s")
    try:
        assert mmsb.state_digest(got) == live
        (d, why), = got.recovery_report.skipped_checkpoints
        assert d == str(ck) and why
        assert not got.recovery_report.clean
    finally:
        got.close()
    assert mmsb.state_digest(mmsb.replay_to_epoch(tmp_path / "s", 5)) == at5
    assert not mmsb.verify_state(tmp_path / "s")["ok"]


# --------------------------------------------------------------------------- 7. middle segment garbage
def test_replay_to_epoch_does_not_stop_at_garbage_after_a_middle_segment(tmp_path):
    s = mmsb.mmsb_start(tmp_path / "s", segment_bytes=4096)
    p = mmsb.create_page(s, size=64, dtype=jnp.float32)
    for i in range(120):
        mmsb.update_page(s, p.id, np.full(64, i, F32))
    s.close()
    segs = list_segments(tmp_path / "s" / "log")
    assert len(segs) >= 3
    with open(segs[1][1], "ab") as f:
        f.write(b"\xff" * 32)
    target = max(r.epoch for r in read_records(tmp_path / "s" / "log", "skip_corrupt") if r.segment == segs[2][0])
    with pytest.raises(CorruptLogError, match=segs[1][1].name):
        mmsb.replay_to_epoch(tmp_path / "s", target)
    with pytest.raises(CorruptLogError):
        mmsb.mmsb_open(tmp_path / "s")
    early = min(r.epoch for r in read_records(tmp_path / "s" / "log", "skip_corrupt") if r.segment == segs[1][0])
    assert mmsb.replay_to_epoch(tmp_path / "s", early).epoch == early  # before the damage: fine


# --------------------------------------------------------------------------- 8. forged records
def _forge(path, write):
    """Append CRC-valid records (``write(log, next_epoch)``) to a stopped state's log."""
    with TLog(path / "log") as log:
        write(log, log.last_epoch + 1)


FORGED = {
    "create 10**8 pages of 1 KiB": lambda log, e: log.log_create_pages(e, 3, 10**8, (1024,), "uint8"),
    "create 2**40 pages": lambda log, e: log.log_create_pages(e, 3, 2**40, (16,), "uint8"),
    "a page of 2**31 + 1 elements": lambda log, e: log.log_create_pages(e, 3, 1, (2**31 + 1,), "uint8"),
    "create at the wrong page id": lambda log, e: log.log_create_pages(e, 99, 1, (4,), "float32"),
    "page id 2**63": lambda log, e: log.log_sparse(e, 2**63, [0], np.ones(1, F32)),
    "epoch 2**63": lambda log, e: log.log_sparse(2**63, 0, [0], np.ones(1, F32)),
    "epoch gap": lambda log, e: log.log_sparse(e + 5, 0, [0], np.ones(1, F32)),
    "empty dense on page 2**40": lambda log, e: log.log_dense(e, 2**40, np.zeros(4, bool), np.zeros(0, F32)),
    "index out of range": lambda log, e: log.log_sparse(e, 0, [4], np.ones(1, F32)),
    "wrong dtype": lambda log, e: log.log_sparse(e, 0, [0], np.ones(1, np.float64)),
    "mask of another shape": lambda log, e: log.log_dense(e, 0, np.ones((2, 2), bool), np.ones(4, F32)),
    "unknown page": lambda log, e: log.log_sparse(e, 77, [0], np.ones(1, F32)),
    "cycle": lambda log, e: (log.log_add_dep(e, 0, 1), log.log_add_dep(e + 1, 1, 0)),
    "delete twice": lambda log, e: log.log_delete_pages(e, [1, 1]),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_records_end_in_an_error_naming_file_and_offset(tmp_path, case):
    s, _ = _small_state(tmp_path / "s")
    s.close()
    _forge(tmp_path / "s", FORGED[case])
    last = read_records(tmp_path / "s" / "log", "absolute").records[-1]
    with pytest.raises(CorruptLogError) as e:
        mmsb.mmsb_open(tmp_path / "s").close()
    assert e.value.path.endswith(".mmsblog") and e.value.offset == last.offset, str(e.value)
    rep = mmsb.verify_state(tmp_path / "s")
    assert not rep["ok"] and any(f"offset {last.offset}" in f for f in rep["faults"]), rep["faults"]
    # salvage skips the record and says so
    got = mmsb.mmsb_open(tmp_path / "s", recovery="skip_corrupt")
    try:
        assert got.epoch >= 6 and any("not applied" in r.reason or "missing" in r.reason for r in got.recovery_report.skipped)
    finally:
        got.close()


def test_a_semiring_no_one_gave_is_named_in_every_mode_and_never_skipped(tmp_path):
    """An ACCUMULATE under a semiring that is neither standard nor given is not damage (the
    caller may pass it): every recovery mode names the record, file and offset, and none
    skips it (skip_corrupt used to, opening a state that never was)."""
    s, _ = _small_state(tmp_path / "s")
    s.close()
    _forge(tmp_path / "s", lambda log, e: log.log_accumulate(e, 0, "nope", np.ones(4, F32)))
    last = read_records(tmp_path / "s" / "log", "absolute").records[-1]
    for mode in ("torn_tail", "point_in_time", "skip_corrupt"):
        with pytest.raises(mmsb.SerializationError, match=rf"\.mmsblog at byte offset {last.offset}: ACCUMULATE.*'nope'"):
            mmsb.mmsb_open(tmp_path / "s", recovery=mode).close()
    rep = mmsb.verify_state(tmp_path / "s")
    assert not rep["ok"] and any("'nope'" in f for f in rep["faults"]), rep["faults"]


def test_a_forged_huge_create_allocates_nothing(tmp_path):
    """Peak memory of opening a ~150-byte record that asks for 10**8 pages stays small."""
    s, _ = _small_state(tmp_path / "s")
    s.close()
    _forge(tmp_path / "s", lambda log, e: log.log_create_pages(e, 3, 10**8, (1024,), "uint8"))
    code = PEAK_RESET + textwrap.dedent(f"""
        import mmsb_jax as mmsb
        try:
            mmsb.mmsb_open({str(tmp_path / 's')!r})
        except mmsb.CorruptLogError as e:
            print("refused", e.offset)
        print(peak_mb())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    assert lines[0] == "refused" and int(lines[-1]) < 1500, out.stdout  # MB of peak RSS


# --------------------------------------------------------------------------- 9. standalone checkpoint
def test_verify_a_standalone_checkpoint(tmp_path):
    s, _ = _small_state(tmp_path / "s")
    mmsb.mmsb_stop(s, checkpoint_path=tmp_path / "alone")
    rep = mmsb.verify_state(tmp_path / "alone")
    assert rep["ok"], rep["faults"]
    assert rep["checkpoints"][0]["note"].startswith("no log")
    snap = mmsb.replay_to_epoch(tmp_path / "s", 6)
    mmsb.mmsb_stop(snap, checkpoint_path=tmp_path / "snap")
    assert mmsb.verify_state(tmp_path / "snap")["ok"]


# --------------------------------------------------------------------------- 10. impossible sizes
def test_impossible_sizes_are_refused_up_front(tmp_path):
    s, _ = _small_state(tmp_path / "s")
    before = mmsb.state_digest(s)
    for n, size in ((400_000_000, 1024), (2**40, 16)):
        with pytest.raises(ResourceLimitError, match="do not fit"):
            mmsb.create_pages(s, n, size=size)
        assert mmsb.state_digest(s) == before  # and the digest still works: nothing was reserved
    with pytest.raises(ResourceLimitError):
        mmsb.create_pages(s, 400_000_000, shape=(2, 512), dtype=jnp.float32)  # a pool it would create
    assert mmsb.state_digest(s) == before and len(s._pools) == 2
    assert isinstance(ResourceLimitError("x"), MemoryError)
    s.close()
    assert _reopen_digest(tmp_path / "s")[0] == before


# --------------------------------------------------------------------------- 11. errors in the hierarchy
def test_bad_arguments_raise_mmsb_errors(tmp_path):
    s, ids = _small_state(tmp_path / "s")
    before = mmsb.state_digest(s)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    calls = {
        "sparse_delta(None, None, 4)": lambda: mmsb.sparse_delta(None, None, 4),
        "dense_delta('a', 'b')": lambda: mmsb.dense_delta("a", "b"),
        "AccumulateDelta(semiring=None)": lambda: mmsb.route_delta(s, ids[0], mmsb.AccumulateDelta(np.ones(4, F32), None)),
        "batch_route_deltas(s, None)": lambda: mmsb.batch_route_deltas(s, None),
        "checkpoint(s, a file)": lambda: mmsb.checkpoint(s, a_file),
        "mmsb_open(None)": lambda: mmsb.mmsb_open(None),
        "mmsb_open(5)": lambda: mmsb.mmsb_open(5),
        "mmsb_open(b'path')": lambda: mmsb.mmsb_open(os.fsencode(tmp_path / "missing")),
        "mmsb_start(segment_bytes='x')": lambda: mmsb.mmsb_start(segment_bytes="x"),
        "mmsb_start(fsync=None)": lambda: mmsb.mmsb_start(fsync=None),
        "replay_to_epoch(None, 1)": lambda: mmsb.replay_to_epoch(None, 1),
        "query_log(5)": lambda: mmsb.query_log(5),
        "verify_state(None)": lambda: mmsb.verify_state(None),
        "mmsb_stop(None)": lambda: mmsb.mmsb_stop(None),
    }
    for name, call in calls.items():
        try:
            call()
        except MMSBError as e:
            assert str(e), name
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{name} raised {type(e).__name__}: {e}")
        else:
            pytest.fail(f"{name} did not raise")
        assert mmsb.state_digest(s) == before, name
    s.close()


# --------------------------------------------------------------------------- 12. open or create
def test_exist_ok_opens_the_state_that_is_there(tmp_path):
    s = mmsb.mmsb_start(tmp_path / "s", semiring="tropical", exist_ok=True)
    p = mmsb.create_page(s, size=4, dtype=jnp.float32)
    mmsb.update_page(s, p.id, np.ones(4, F32))
    s.close()
    with pytest.raises(SerializationError, match="exist_ok"):
        mmsb.mmsb_start(tmp_path / "s", semiring="tropical")
    s = mmsb.mmsb_start(tmp_path / "s", semiring="tropical", exist_ok=True)
    assert s.epoch == 2 and mmsb.query_page(s, p.id).tolist() == [1.0] * 4
    s.close()
    with pytest.raises(SerializationError, match="tropical"):
        mmsb.mmsb_start(tmp_path / "s", semiring="real", exist_ok=True)


# --------------------------------------------------------------------------- lost tails
def test_a_cleanly_stopped_state_whose_log_lost_its_last_record_is_refused(tmp_path):
    """A cut exactly at a record boundary leaves a log that reads as whole; the settings file
    remembers the epoch of the clean stop, so the loss is found (found by the fault campaign)."""
    s, _ = _small_state(tmp_path / "s")
    s.close()
    last = read_records(tmp_path / "s" / "log", "absolute").records[-1]
    seg = list_segments(tmp_path / "s" / "log")[-1][1]
    os.truncate(seg, last.offset)
    with pytest.raises(SerializationError, match="stopped at epoch 6.*reach only epoch 5"):
        mmsb.mmsb_open(tmp_path / "s")
    assert not mmsb.verify_state(tmp_path / "s")["ok"]
    with pytest.raises(SerializationError, match="cannot be rebuilt"):
        mmsb.replay_to_epoch(tmp_path / "s", 6)
    got = mmsb.mmsb_open(tmp_path / "s", recovery="point_in_time")  # accept what is left
    assert got.epoch == 5
    got.close()
    assert _reopen_digest(tmp_path / "s")[1] == 5  # and that is the state of record now
