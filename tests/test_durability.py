"""Durability: SIGKILL mid-write, torn tails, flipped bytes, crashed and damaged checkpoints,
log compaction."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import run_and_kill

import mmsb_jax as mmsb
from mmsb_jax import CorruptLogError, InvalidArgumentError, SerializationError
from mmsb_jax.log._directory import update_state_file

F32 = np.float32
N = 16  # elements per page in the crash child

# --------------------------------------------------------------------------- SIGKILL crash
CHILD = r"""
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import numpy as np
import mmsb_jax as mmsb

path = sys.argv[1]
N = 16
s = mmsb.mmsb_start(path, fsync="always")
a = mmsb.create_page(s, size=N, dtype=np.int32).id      # epoch 1
b = mmsb.create_page(s, size=N, dtype=np.int32).id      # epoch 2
print("READY", flush=True)
i = 0
while True:
    i += 1
    k = i % 4
    if k == 0:
        e = mmsb.update_page(s, a, np.full(N, i, np.int32))
    elif k == 1:
        e = mmsb.route_delta(s, b, mmsb.sparse_delta([i % N], np.array([i], np.int32), N))
    elif k == 2:  # a multi-record batch (BATCH records + COMMIT)
        mask = (np.arange(N) % 3) == (i % 3)
        e = mmsb.batch_route_deltas(s, [
            (a, mmsb.sparse_delta([i % N], np.array([-i], np.int32), N)),
            (b, mmsb.dense_delta(mask, np.full(N, 2 * i, np.int32))),
        ])
    else:
        e = mmsb.route_sparse_batch(s, np.array([a, b]), np.array([[(i + 1) % N], [(i + 2) % N]]),
                                    np.array([[3 * i], [4 * i]], np.int32))
    print(f"ACK {i} {e}", flush=True)
    if i % 40 == 0:
        mmsb.checkpoint(s)  # a kill may land inside a checkpoint, too
        print(f"CKPT {i}", flush=True)
"""


def child_model(i: int):
    """The pages (a, b) after the child's step i (epoch i + 2)."""
    a = np.zeros(N, np.int32)
    b = np.zeros(N, np.int32)
    for j in range(1, i + 1):
        k = j % 4
        if k == 0:
            a[:] = j
        elif k == 1:
            b[j % N] = j
        elif k == 2:
            a[j % N] = -j
            mask = (np.arange(N) % 3) == (j % 3)
            b[mask] = 2 * j
        else:
            a[(j + 1) % N] = 3 * j
            b[(j + 2) % N] = 4 * j
    return a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_keeps_every_acknowledged_epoch(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "state"
    lines = run_and_kill(CHILD, [path], delay=rng.uniform(0.0, 0.8))
    acks = [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("ACK")]
    assert acks, f"no acknowledged write before the kill: {lines[:5]}"
    for i, e in acks:
        assert e == i + 2
    last_i, last_e = acks[-1]
    s = mmsb.mmsb_open(path)
    try:
        # every acknowledged epoch is there; at most the one in flight on top of it
        assert last_e <= s.epoch <= last_e + 1
        a, b = child_model(s.epoch - 2)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, 0)), a)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, 1)), b)
        snap = mmsb.replay_to_epoch(s, last_e)
        a, b = child_model(last_i)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, 0)), a)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(snap, 1)), b)
        # the reopened state continues the epochs and survives another reopen
        e = mmsb.update_page(s, 0, np.full(N, -7, np.int32))
        assert e == s.epoch
        digest = mmsb.state_digest(s)
    finally:
        s.close()
    s = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(s) == digest
    finally:
        s.close()


# --------------------------------------------------------------------------- helpers
def build(path, semiring="real"):
    """A state with dependencies, batches and a checkpoint; returns (digests per epoch, values)."""
    s = mmsb.mmsb_start(path, semiring=semiring, fsync="batch")
    ids = [int(i) for i in mmsb.create_pages(s, 3, size=8, dtype=np.float32)]  # 1
    mmsb.add_dependency(s, ids[0], ids[2], weight=2.0)  # 2
    for i in range(1, 6):  # 3..7
        mmsb.update_page(s, ids[0], np.full(8, i, F32))
    mmsb.checkpoint(s)  # at epoch 7
    mmsb.update_page(s, ids[1], np.arange(8, dtype=F32))  # 8
    mmsb.batch_route_deltas(s, [(ids[0], mmsb.sparse_delta([1], np.array([9.0], F32), 8)),
                                (ids[1], mmsb.accumulate_delta(np.ones(8, F32), "real"))])  # 9
    for i in range(10, 14):  # 10..13
        mmsb.route_delta(s, ids[2], mmsb.sparse_delta([i % 8], np.array([float(i)], F32), 8))
    digests = {e: mmsb.state_digest(mmsb.replay_to_epoch(s, e)) for e in range(s.epoch + 1)}
    values = {e: {p: np.asarray(mmsb.query_page(mmsb.replay_to_epoch(s, e), p)) for p in ids}
              for e in range(3, s.epoch + 1)}
    assert digests[s.epoch] == mmsb.state_digest(s)
    mmsb.mmsb_stop(s)
    return ids, digests, values


def as_if_crashed(path):
    """Make a cleanly stopped state look as if it had crashed at its last epoch (the settings
    file then still holds the epoch of an earlier clean stop: none here)."""
    update_state_file(str(path), closed_at=0)


def segments(path):
    return sorted(glob.glob(os.path.join(path, "log", "log-*.mmsblog")))


def flip(file, offset, mask=0xFF):
    with open(file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def record_at(path, epoch, kind=None):
    recs = [r for r in mmsb.query_log(path, epochs=(epoch, epoch)) if kind is None or r.kind.name == kind]
    assert recs, (epoch, kind)
    return recs[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    path = root / "state"
    ids, digests, values = build(path)
    return path, ids, digests, values


@pytest.fixture
def copy_of(built, tmp_path):
    path, ids, digests, values = built
    dst = tmp_path / "state"
    shutil.copytree(path, dst)
    return dst, ids, digests, values


# --------------------------------------------------------------------------- torn tails
@pytest.mark.parametrize("cut", [1, 3, 8, 29])
def test_torn_tail_drops_only_the_last_record(copy_of, cut):
    path, ids, digests, values = copy_of
    last = max(digests)
    seg = segments(path)[-1]
    size = os.path.getsize(seg)
    os.truncate(seg, size - cut)
    with pytest.raises(CorruptLogError):
        mmsb.mmsb_open(path, recovery="absolute")
    # the state was stopped cleanly at `last`: a log that now ends before it lost durable records
    with pytest.raises(SerializationError, match=f"stopped at epoch {last}.*reach only epoch {last - 1}"):
        mmsb.mmsb_open(path)
    as_if_crashed(path)  # a crash tears the tail of a log that was not stopped: dropped, reported
    s = mmsb.mmsb_open(path)
    try:
        assert s.epoch == last - 1
        assert mmsb.state_digest(s) == digests[last - 1]
        assert s.recovery_report.torn_tail is not None
        e = mmsb.update_page(s, ids[1], np.full(8, 42, F32))
        assert e == last  # the dropped epoch is taken again
        digest = mmsb.state_digest(s)
    finally:
        s.close()
    s = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(s) == digest
        assert s.recovery_report.torn_tail is None
    finally:
        s.close()


def test_torn_batch_at_the_tail_is_dropped_whole(tmp_path):
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="batch")
    a, b = (int(i) for i in mmsb.create_pages(s, 2, size=4, dtype=np.float32))
    mmsb.update_page(s, a, np.ones(4, F32))
    before = mmsb.state_digest(s)
    mmsb.batch_route_deltas(s, [(a, mmsb.dense_delta(np.ones(4, bool), np.full(4, 5, F32))),
                                (b, mmsb.sparse_delta([2], np.array([3], F32), 4))])
    mmsb.mmsb_stop(s)
    commit = record_at(path, 3, None)
    recs = mmsb.query_log(path, epochs=(3, 3), kinds=["DENSE", "SPARSE", "COMMIT"])
    assert [r.kind.name for r in recs] == ["DENSE", "SPARSE", "COMMIT"]
    seg = segments(path)[-1]
    os.truncate(seg, os.path.getsize(seg) - 4)  # tear the COMMIT
    as_if_crashed(path)
    s = mmsb.mmsb_open(path)
    try:
        assert s.epoch == 2 and mmsb.state_digest(s) == before
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, b)), np.zeros(4, F32))
    finally:
        s.close()
    assert commit.epoch == 3


# --------------------------------------------------------------------------- flipped bytes
def test_flipped_byte_in_the_middle_of_the_log(copy_of):
    path, ids, digests, values = copy_of
    last = max(digests)
    bad = record_at(path, 8, "DENSE")  # page ids[1]; later records touch other pages too
    seg = os.path.join(path, "log", f"log-{bad.segment:08d}.mmsblog")
    flip(seg, bad.offset + 40)
    with pytest.raises(CorruptLogError) as ei:
        mmsb.mmsb_open(path)
    err = ei.value
    assert os.path.samefile(err.path, seg) and err.offset == bad.offset
    assert seg in str(err) and str(bad.offset) in str(err)
    with pytest.raises(CorruptLogError):
        mmsb.replay_to_epoch(path, last)

    s = mmsb.mmsb_open(path, recovery="point_in_time")
    try:
        assert s.epoch == 7
        assert mmsb.state_digest(s) == digests[7]
        assert s.recovery_report.stopped_at is not None
        assert mmsb.update_page(s, ids[1], np.full(8, 5, F32)) == 8
        digest = mmsb.state_digest(s)
    finally:
        s.close()
    s = mmsb.mmsb_open(path)  # the damage was cut away at the point-in-time open
    try:
        assert mmsb.state_digest(s) == digest
    finally:
        s.close()


@pytest.mark.parametrize("keep_checkpoint", [False, True], ids=["log-only", "checkpoint-at-7"])
def test_skip_corrupt_salvages_the_records_after_the_damage(copy_of, keep_checkpoint):
    """Damage at epoch 8 (page ids[1]); with the checkpoint, epoch 8 is the first record
    after it. skip_corrupt must return every other record."""
    path, ids, digests, values = copy_of
    last = max(digests)
    if not keep_checkpoint:
        shutil.rmtree(path / "checkpoints")
    bad = record_at(path, 8, "DENSE")
    flip(os.path.join(path, "log", f"log-{bad.segment:08d}.mmsblog"), bad.offset + 40)
    s = mmsb.mmsb_open(path, recovery="skip_corrupt")
    try:
        assert s.epoch == last
        (skipped,) = [r for r in s.recovery_report.skipped if r.end > r.start]  # the damaged bytes
        assert skipped.start <= bad.offset < skipped.end
        (gap,) = [r for r in s.recovery_report.skipped if r.end == r.start]  # and the epoch they held
        assert "epochs 8..8" in gap.reason
        # every page but ids[1] is as before; ids[1] misses only the damaged write (epoch 8)
        for p in (ids[0], ids[2]):
            np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, p)), values[last][p])
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, ids[1])),
                                      values[7][ids[1]] + F32(1))  # epoch 9 added 1 to it
    finally:
        s.close()


def test_replay_to_an_epoch_before_the_damage(copy_of):
    """Records past end_epoch are not validated (docs/tlog-format.md): damage at epoch 8
    does not stop a replay to epoch 7 (served by the checkpoint at 7) or to epoch 6."""
    path, ids, digests, values = copy_of
    bad = record_at(path, 8, "DENSE")
    flip(os.path.join(path, "log", f"log-{bad.segment:08d}.mmsblog"), bad.offset + 40)
    assert mmsb.state_digest(mmsb.replay_to_epoch(path, 6)) == digests[6]
    assert mmsb.state_digest(mmsb.replay_to_epoch(path, 7)) == digests[7]


def test_flipped_byte_when_the_whole_log_must_be_replayed(copy_of):
    """Without the checkpoint, damage at epoch 5 leaves epochs 1..4 for point_in_time."""
    path, ids, digests, values = copy_of
    shutil.rmtree(path / "checkpoints")
    bad = record_at(path, 5, "DENSE")
    flip(os.path.join(path, "log", f"log-{bad.segment:08d}.mmsblog"), bad.offset + 36)
    with pytest.raises(CorruptLogError) as ei:
        mmsb.mmsb_open(path)
    assert ei.value.offset == bad.offset
    s = mmsb.mmsb_open(path, recovery="point_in_time")
    try:
        assert s.epoch == 4 and mmsb.state_digest(s) == digests[4]
        e = mmsb.update_page(s, ids[1], np.full(8, 3, F32))
        assert e == 5
        digest = mmsb.state_digest(s)
    finally:
        s.close()
    s = mmsb.mmsb_open(path)  # the damaged tail was cut away; the log is clean again
    try:
        assert mmsb.state_digest(s) == digest
    finally:
        s.close()


def test_skip_corrupt_recovery_is_durable(copy_of):
    """What mmsb_open(recovery="skip_corrupt") salvaged must still be there after a reopen."""
    path, ids, digests, values = copy_of
    shutil.rmtree(path / "checkpoints")
    bad = record_at(path, 8, "DENSE")
    flip(os.path.join(path, "log", f"log-{bad.segment:08d}.mmsblog"), bad.offset + 40)
    s = mmsb.mmsb_open(path, recovery="skip_corrupt")
    try:
        last = s.epoch
        salvaged = {p: np.asarray(mmsb.query_page(s, p)) for p in ids}
        e = mmsb.update_page(s, ids[1], np.full(8, 77, F32))  # ids[1] feeds no other page
        assert e == last + 1
        digest = mmsb.state_digest(s)
    finally:
        s.close()
    s = mmsb.mmsb_open(path)
    try:
        assert s.epoch == last + 1
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, ids[2])), salvaged[ids[2]])
        assert mmsb.state_digest(s) == digest
    finally:
        s.close()


def test_bad_recovery_mode_is_rejected(copy_of):
    path, *_ = copy_of
    with pytest.raises(InvalidArgumentError):
        mmsb.mmsb_open(path, recovery="yolo")


# --------------------------------------------------------------------------- checkpoints
def test_crashed_checkpoint_is_ignored(copy_of):
    path, ids, digests, values = copy_of
    last = max(digests)
    ck = path / "checkpoints"
    good = sorted(os.listdir(ck))
    assert good == [f"epoch-{7:012d}"]
    # 1. a crash while orbax wrote the arrays: arrays/ but no manifest
    crashed = ck / f"epoch-{last:012d}"
    (crashed / "arrays" / "d").mkdir(parents=True)
    (crashed / "arrays" / "d" / "junk").write_bytes(os.urandom(100))
    # 2. a crash while the manifest was written (atomic: a partial .tmp, no manifest)
    partial = ck / f"epoch-{last - 1:012d}"
    shutil.copytree(ck / good[0], partial)
    manifest = (partial / "manifest.json").read_text()
    (partial / "manifest.json").unlink()
    (partial / "manifest.json.tmp").write_text(manifest[: len(manifest) // 2])
    # 3. a truncated manifest (e.g. a damaged disk) in a directory named for a newer epoch than
    # the log reaches: what it held cannot be rebuilt, so opening says so instead of quietly
    # going back to the log's last epoch
    torn = ck / f"epoch-{last + 5:012d}"
    shutil.copytree(ck / good[0], torn)
    (torn / "manifest.json").write_text(manifest.replace('"epoch": 7', f'"epoch": {last}')[:40])
    with pytest.raises(SerializationError, match=f"epoch-{last + 5:012d}.*manifest cannot be read.*only to epoch {last}"):
        mmsb.mmsb_open(path)
    shutil.rmtree(torn)
    s = mmsb.mmsb_open(path)
    try:
        assert s.epoch == last
        assert mmsb.state_digest(s) == digests[last]
        # the crashed directories were removed when the state reopened its log, and their
        # names are free to be checkpointed into again
        assert sorted(os.listdir(ck)) == good
        out = mmsb.checkpoint(s)
        assert os.path.samefile(out, crashed)
        assert json.loads((crashed / "manifest.json").read_text())["epoch"] == last
    finally:
        s.close()
    for e in (7, 10, last):
        assert mmsb.state_digest(mmsb.replay_to_epoch(path, e)) == digests[e]
    shutil.rmtree(crashed)
    s = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(s) == digests[last]
    finally:
        s.close()


def _largest_array_file(ckpt_dir):
    files = [f for f in glob.glob(os.path.join(ckpt_dir, "arrays", "**", "*"), recursive=True)
             if os.path.isfile(f) and "METADATA" not in f and not f.endswith((".txt", ".ocdbt", ".json"))]
    return max(files, key=os.path.getsize)


def test_corrupted_checkpoint_arrays_never_load_silently(tmp_path):
    """A checkpoint whose arrays were damaged on disk (manifest intact) must either raise
    SerializationError or be bypassed (older checkpoint / log): never load wrong bytes."""
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="batch")
    ids = [int(i) for i in mmsb.create_pages(s, 4, size=2048, dtype=np.float32)]
    rng = np.random.default_rng(0)
    for p in ids:
        mmsb.update_page(s, p, rng.standard_normal(2048).astype(F32))
    ck = mmsb.checkpoint(s)
    digest = mmsb.state_digest(s)
    mmsb.mmsb_stop(s)
    target = _largest_array_file(ck)
    size = os.path.getsize(target)
    assert size > 10_000  # the page data itself
    flip(target, size // 2, 0x01)
    try:
        s = mmsb.mmsb_open(path)
    except SerializationError:
        return  # refusing is acceptable
    try:
        assert mmsb.state_digest(s) == digest, "a damaged checkpoint was loaded silently"
    finally:
        s.close()


def test_checkpoint_with_missing_arrays(copy_of):
    """A manifest without its arrays: report what happens (raise, or fall back to the log)."""
    path, ids, digests, values = copy_of
    last = max(digests)
    shutil.rmtree(path / "checkpoints" / f"epoch-{7:012d}" / "arrays")
    try:
        s = mmsb.mmsb_open(path)
    except SerializationError as e:
        assert "arrays" in str(e)
        return
    try:
        assert mmsb.state_digest(s) == digests[last]
    finally:
        s.close()


# --------------------------------------------------------------------------- compaction
def _small_segments(state, nbytes=4096):
    """MMSBState has no segment-size option: swap in a TLog with small segments."""
    from mmsb_jax.log import TLog

    state._log.close()
    state._log = TLog(os.path.join(state.path, "log"), fsync=state.fsync, segment_bytes=nbytes)


def test_compact_log(tmp_path):
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    try:
        _small_segments(s)
        a, b, c = (int(i) for i in mmsb.create_pages(s, 3, size=256, dtype=np.float32))
        mmsb.add_dependency(s, a, c, weight=2.0)
        vals = {}

        def snap():
            vals[s.epoch] = {p: np.asarray(mmsb.query_page(s, p)) for p in s.page_ids().tolist()}

        snap()
        for i in range(1, 16):
            mmsb.update_page(s, (a, b)[i % 2], np.full(256, i, F32))
            snap()
        old_ck = s.epoch
        mmsb.checkpoint(s)  # an older checkpoint, which compaction leaves in place
        for i in range(16, 20):
            mmsb.update_page(s, (a, b)[i % 2], np.full(256, i, F32))
            snap()
        nseg = len(s._log.segments())
        assert nseg > 3
        res = mmsb.compact_log(s)
        E = res["epoch"]
        assert E == s.epoch and res["dropped_segments"] and res["bytes_freed"] > 0
        assert all(not os.path.exists(p) for p in res["dropped_segments"])
        for i in range(20, 24):
            mmsb.update_page(s, (a, b)[i % 2], np.full(256, i, F32))
            snap()
        for e in range(E, s.epoch + 1):
            r = mmsb.replay_to_epoch(s, e)
            assert r.epoch == e
            for p, v in vals[e].items():
                np.testing.assert_array_equal(np.asarray(mmsb.query_page(r, p)), v)
        first_kept = mmsb.query_log(s)[0].epoch
        assert first_kept > 1
        for e in range(1, E):
            if e < old_ck:  # neither a checkpoint nor the log reaches these epochs any more
                with pytest.raises(SerializationError):
                    mmsb.replay_to_epoch(s, e)
                continue
            try:  # the older checkpoint may still serve these, then it must be right
                r = mmsb.replay_to_epoch(s, e)
            except SerializationError:
                assert e > old_ck
                continue
            assert r.epoch == e
            for p, v in vals[e].items():
                np.testing.assert_array_equal(np.asarray(mmsb.query_page(r, p)), v)
        digest = mmsb.state_digest(s)
    finally:
        s.close()
    s = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(s) == digest
        for p, v in vals[max(vals)].items():
            np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, p)), v)
    finally:
        s.close()


def test_compact_log_with_default_segments_frees_the_active_segment(tmp_path):
    """One (active) segment holding everything: compaction closes it and drops it; the epochs
    before the checkpoint are gone (and say so), the rest replays, writes go on."""
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    try:
        p = mmsb.create_page(s, size=4, dtype=jnp.float32).id
        for i in range(1, 4):
            mmsb.update_page(s, p, np.full(4, i, F32))
        res = mmsb.compact_log(s)
        assert len(res["dropped_segments"]) == 1 and res["epoch"] == 4 and res["bytes_freed"] > 0
        assert not os.listdir(path / "log") or all(not n.endswith(".mmsblog") for n in os.listdir(path / "log"))
        for e in range(1, 4):  # (epoch 0, the empty state, needs no log)
            with pytest.raises(SerializationError, match="compacted away"):
                mmsb.replay_to_epoch(s, e)
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(mmsb.replay_to_epoch(s, 4), p)), np.full(4, 3, F32))
        mmsb.update_page(s, p, np.full(4, 9, F32))
        np.testing.assert_array_equal(np.asarray(mmsb.query_page(mmsb.replay_to_epoch(s, 5), p)), np.full(4, 9, F32))
        digest = mmsb.state_digest(s)
    finally:
        s.close()
    s = mmsb.mmsb_open(path)
    try:
        assert s.epoch == 5 and mmsb.state_digest(s) == digest
    finally:
        s.close()
    shutil.rmtree(path / "checkpoints")  # without the checkpoint the compacted log cannot stand alone
    with pytest.raises(SerializationError, match="compacted away"):
        mmsb.mmsb_open(path)
