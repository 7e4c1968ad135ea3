"""Reading the log from a checkpoint's resume point (log_resume.json): a reopen reads only the
log after the checkpoint, and every hint that does not hold falls back to the whole segment."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax.log import ResumePoint, read_records
from mmsb_jax.log._checkpoint import RESUME, read_resume


def _build(path, before=40, after=25, seed=0):
    """A state with ``before`` writes, a checkpoint, then ``after`` more writes; returns
    (checkpoint directory, its epoch, digest at the end)."""
    rng = np.random.default_rng(seed)
    st = mmsb.mmsb_start(path, fsync="never")
    ids = mmsb.create_pages(st, 8, size=32, dtype=np.int32)

    def write(n):
        for _ in range(n):
            rows = rng.integers(0, 8, 5)
            mmsb.route_sparse_batch(st, ids[rows], rng.integers(0, 32, (5, 2)).astype(np.int32),
                                    rng.integers(-99, 99, (5, 2)).astype(np.int32))

    write(before)
    ckpt = mmsb.checkpoint(st)
    epoch = st.epoch
    write(after)
    digest = mmsb.state_digest(st)
    mmsb.mmsb_stop(st)
    return str(ckpt), epoch, digest


def _log(path):
    return os.path.join(path, "log")


def test_checkpoint_records_a_resume_point_and_reopen_reads_from_it(tmp_path):
    path = str(tmp_path / "s")
    ckpt, epoch, digest = _build(path)
    point = read_resume(ckpt, epoch)
    assert point is not None and point.offset > 48
    full = read_records(_log(path), "torn_tail", epoch + 1)
    tail = read_records(_log(path), "torn_tail", epoch + 1, start_at=point)
    assert [r.epoch for r in tail] == [r.epoch for r in full] == list(range(epoch + 1, epoch + 26))
    assert [(r.segment, r.offset) for r in tail] == [(r.segment, r.offset) for r in full]
    assert tail.report.end == full.report.end
    # only the records from the point were read (the full read also counts the 40 before)
    assert sum(tail.report.kind_counts.values()) == 25 < sum(full.report.kind_counts.values())
    again = mmsb.mmsb_open(path)
    assert mmsb.state_digest(again) == digest
    again.close()


@pytest.mark.parametrize("damage", ["stamp", "mid-record", "misaligned", "past-the-end", "before-the-header"])
def test_a_point_that_does_not_hold_falls_back_to_the_whole_segment(tmp_path, damage):
    path = str(tmp_path / "s")
    ckpt, epoch, digest = _build(path)
    point = read_resume(ckpt, epoch)
    bad = {
        "stamp": point._replace(created_ns=point.created_ns + 1),
        "mid-record": point._replace(offset=point.offset + 8),
        "misaligned": point._replace(offset=point.offset + 3),
        "past-the-end": point._replace(offset=10**9),
        "before-the-header": point._replace(offset=8),
    }[damage]
    full = read_records(_log(path), "torn_tail", epoch + 1)
    got = read_records(_log(path), "torn_tail", epoch + 1, start_at=bad)
    assert [(r.epoch, r.offset) for r in got] == [(r.epoch, r.offset) for r in full]
    assert got.report.kind_counts == full.report.kind_counts and got.report.end == full.report.end
    assert got.report.clean


def test_a_point_of_another_segment_index_is_ignored(tmp_path):
    path = str(tmp_path / "s")
    ckpt, epoch, _ = _build(path)
    point = read_resume(ckpt, epoch)
    full = read_records(_log(path), "torn_tail", 1)
    got = read_records(_log(path), "torn_tail", 1, start_at=point._replace(segment=7))
    assert [r.epoch for r in got] == [r.epoch for r in full]


def test_a_torn_tail_after_the_point_is_handled_as_without_it(tmp_path):
    """Damage after the point sends the read back to the segment's start, where the mode
    handles it exactly as a read without the point does."""
    path = str(tmp_path / "s")
    ckpt, epoch, _ = _build(path)
    point = read_resume(ckpt, epoch)
    seg = os.path.join(_log(path), sorted(f for f in os.listdir(_log(path)) if f.endswith(".mmsblog"))[-1])
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:
        f.truncate(size - 5)  # tear the last record
    full = read_records(_log(path), "torn_tail", epoch + 1)
    got = read_records(_log(path), "torn_tail", epoch + 1, start_at=point)
    assert full.report.torn_tail is not None and got.report.torn_tail == full.report.torn_tail
    assert [r.epoch for r in got] == [r.epoch for r in full]
    with pytest.raises(mmsb.CorruptLogError):
        read_records(_log(path), "absolute", epoch + 1, start_at=point)


@pytest.mark.parametrize("edit", ["garbage", "crc", "other-epoch", "negative", "missing"])
def test_a_damaged_or_foreign_hint_file_is_no_hint(tmp_path, edit):
    path = str(tmp_path / "s")
    ckpt, epoch, digest = _build(path)
    hint = os.path.join(ckpt, RESUME)
    obj = json.load(open(hint))
    if edit == "garbage":
        open(hint, "wb").write(b"\x00{not json")
    elif edit == "crc":
        obj["offset"] += 8
        json.dump(obj, open(hint, "w"))  # its crc32c no longer matches
    elif edit == "other-epoch":
        assert read_resume(ckpt, epoch + 1) is None
    elif edit == "negative":
        from mmsb_jax.log._files import write_checked_json

        write_checked_json(hint, {**{k: v for k, v in obj.items() if k != "crc32c"}, "offset": -8})
    else:
        os.remove(hint)
    if edit != "other-epoch":
        assert read_resume(ckpt, epoch) is None
    again = mmsb.mmsb_open(path)  # a reopen without a hint reads the whole log after the checkpoint
    assert mmsb.state_digest(again) == digest
    again.close()


def test_resume_point_survives_reopen_and_rotation(tmp_path):
    """A checkpoint taken after reopening (the writer re-read its segment's stamp) and one
    whose log rotated to new segments afterwards both rebuild the same state."""
    path = str(tmp_path / "s")
    rng = np.random.default_rng(2)
    st = mmsb.mmsb_start(path, fsync="never", segment_bytes=4096)
    ids = mmsb.create_pages(st, 4, size=64, dtype=np.float32)
    for _ in range(10):
        mmsb.update_page(st, int(ids[rng.integers(4)]), rng.standard_normal(64).astype(np.float32))
    mmsb.mmsb_stop(st)
    st = mmsb.mmsb_open(path)
    ckpt = mmsb.checkpoint(st)
    point = read_resume(str(ckpt), st.epoch)
    assert isinstance(point, ResumePoint)
    for _ in range(30):  # 30 x ~300 B: past several 4 KiB segments
        mmsb.update_page(st, int(ids[rng.integers(4)]), rng.standard_normal(64).astype(np.float32))
    digest = mmsb.state_digest(st)
    mmsb.mmsb_stop(st)
    again = mmsb.mmsb_open(path)
    assert mmsb.state_digest(again) == digest
    again.close()


def _outcome(fn):
    try:
        res = fn()
    except mmsb.MMSBError as e:
        return type(e).__name__
    rep = res.report
    return ([(r.epoch, r.segment, r.offset) for r in res], rep.end, rep.last_epoch, rep.torn_tail,
            rep.stopped_at, rep.skipped)


def _damage_after_point_campaign(tmp_path, cases, seed):
    """Damage bytes after the resume point (truncation, a flipped byte, a zeroed range): for
    every recovery mode, the read from the point and the read of the whole segment return the
    same records and report the same damage (or raise the same error)."""
    from mmsb_jax.log import MODES

    path = str(tmp_path / "s")
    ckpt, epoch, _ = _build(path, before=30, after=30, seed=seed)
    point = read_resume(ckpt, epoch)
    seg = os.path.join(_log(path), sorted(f for f in os.listdir(_log(path)) if f.endswith(".mmsblog"))[-1])
    pristine = open(seg, "rb").read()
    rng = np.random.default_rng(seed)
    for _ in range(cases):
        data = bytearray(pristine)
        at = int(rng.integers(point.offset, len(data)))
        how = rng.integers(3)
        if how == 0:
            data = data[:at]
        elif how == 1:
            data[at] ^= 1 << int(rng.integers(8))
        else:
            data[at : at + int(rng.integers(1, 64))] = bytes(min(len(data) - at, 64))[: len(data[at : at + 64])]
        open(seg, "wb").write(bytes(data))
        for mode in MODES:
            a = _outcome(lambda: read_records(_log(path), mode, epoch + 1, start_at=point))
            b = _outcome(lambda: read_records(_log(path), mode, epoch + 1))
            assert a == b, (mode, how, at)
    open(seg, "wb").write(pristine)


def test_damage_after_the_point_reads_as_without_it(tmp_path):
    _damage_after_point_campaign(tmp_path, cases=12, seed=11)


@pytest.mark.slow
def test_damage_after_the_point_reads_as_without_it_campaign(tmp_path):
    for seed in range(8):
        _damage_after_point_campaign(tmp_path / str(seed), cases=60, seed=100 + seed)


@pytest.mark.parametrize("where", ["next-boundary", "last-record", "end-of-log"])
def test_a_checksum_valid_hint_at_another_boundary_is_not_trusted(tmp_path, where):
    """A hint naming a real record boundary after the checkpoint's (a hand-edited file with its
    CRC recomputed, or a log that lost and rewrote bytes) does not match the record that ends
    at the checkpoint's point: the read starts at the segment's start, the state reopens."""
    from mmsb_jax.log._files import write_checked_json

    path = str(tmp_path / "s")
    ckpt, epoch, digest = _build(path)
    point = read_resume(ckpt, epoch)
    recs = list(read_records(_log(path)))
    ends = {r.offset: (recs[i + 1].offset if i + 1 < len(recs) else None) for i, r in enumerate(recs)}
    seg = os.path.join(_log(path), sorted(f for f in os.listdir(_log(path)) if f.endswith(".mmsblog"))[-1])
    off = {"next-boundary": ends[point.offset], "last-record": recs[-1].offset,
           "end-of-log": os.path.getsize(seg)}[where]
    bad = point._replace(offset=off)
    full = read_records(_log(path), "torn_tail", epoch + 1)
    got = read_records(_log(path), "torn_tail", epoch + 1, start_at=bad)
    assert [r.epoch for r in got] == [r.epoch for r in full] == list(range(epoch + 1, epoch + 26))
    hint = os.path.join(ckpt, RESUME)
    obj = {k: v for k, v in json.load(open(hint)).items() if k != "crc32c"}
    write_checked_json(hint, {**obj, "offset": off})
    assert read_resume(ckpt, epoch) == bad  # read back as a valid hint ...
    again = mmsb.mmsb_open(path)  # ... and still not trusted
    assert mmsb.state_digest(again) == digest
    again.close()
