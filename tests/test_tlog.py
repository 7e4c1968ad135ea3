"""Durable transaction log: format round trips, torn tails, corruption, crashes, rotation, threads."""

from __future__ import annotations

import ast
import itertools
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers import parse_source

from mmsb_jax.log import _encode as R
from mmsb_jax._errors import CorruptLogError, InvalidArgumentError, SerializationError
from mmsb_jax.log import (
    Accumulate,
    AddDep,
    CreatePages,
    DeletePages,
    Dense,
    Kind,
    RemoveDep,
    Sparse,
    SparseBatch,
    TLog,
    list_segments,
    query_records,
    read_records,
)

REPO = Path(__file__).resolve().parents[1]
DTYPES = [
    np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128, ml_dtypes.bfloat16,
]


def _rand(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        out = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        out = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    elif dtype.kind == "c":
        out = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    else:
        out = rng.standard_normal(shape).astype(dtype)
    return np.asarray(out, dtype)


def _body(rec):
    """Comparable view of a record without its timestamp/position."""
    out = [type(rec).__name__, rec.epoch, rec.source, rec.batched]
    for name in type(rec).__dataclass_fields__:
        if name in ("epoch", "timestamp", "source", "batched", "segment", "offset"):
            continue
        v = getattr(rec, name)
        if isinstance(v, np.ndarray):
            out.append((v.dtype.name, v.shape, v.tobytes()))
        else:
            out.append(v)
    return out


def _write_sample(d, fsync="never", **kw):
    """A small log with every kind; the last record is a plain (non-batch) record."""
    rng = np.random.default_rng(0)
    with TLog(d, fsync=fsync, **kw) as log:
        log.log_create_pages(1, 10, 3, (2, 3), "float32", "cpu", source="demo")
        log.log_sparse(2, 10, [1, 4], np.array([0.5, 1.5], np.float32))
        with log.batch(3) as b:
            b.log_sparse_batch([10, 11], np.array([[0], [5]], np.int32), np.ones((2, 1), np.float32))
            b.log_add_dep(10, 11, 2.0, "flow")
        m = np.zeros((2, 3), bool)
        m[1, 2] = True
        log.log_dense(4, 12, m, _rand(rng, (2, 3), np.float32))
        log.log_remove_dep(5, 10, 11)
    return list_segments(d)[0][1]


def _layout(d):
    """[(offset, end, kind, epoch, batched)] of every record of the single segment."""
    res = read_records(d, "absolute", include_commit=True)
    path = list_segments(d)[0][1]
    offs = [r.offset for r in res] + [path.stat().st_size]
    return [(offs[i], offs[i + 1], r.kind, r.epoch, r.batched) for i, r in enumerate(res)]


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@given(dtype=st.sampled_from(DTYPES), shape=shapes, seed=st.integers(0, 2**32 - 1), k=st.integers(0, 4))
def test_round_trip_every_kind(dtype, shape, seed, k):
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    page = _rand(rng, shape, dtype)
    mask = np.asarray(rng.random(shape) < 0.5)
    idx = rng.integers(0, max(size, 1), size=k).astype(np.int32)
    vals = _rand(rng, (k,), dtype)
    bp = rng.integers(0, 2**63, size=3).astype(np.uint64)
    bi = rng.integers(0, 1000, size=(3, k)).astype(np.int32)
    bv = _rand(rng, (3, k), dtype)
    dtname = np.dtype(dtype).name
    expected = [
        CreatePages(epoch=1, source="user", first_page_id=7, count=3, shape=shape, dtype=dtname, location="gpu"),
        Sparse(epoch=2, source="user", page_id=7, indices=idx, values=vals),
        SparseBatch(epoch=3, source="jit-ring", page_ids=bp, indices=bi, values=bv),
        Dense(epoch=4, source="user", page_id=8, mask=mask, values=page[mask]),
        Accumulate(epoch=5, source="user", page_id=9, semiring="log", payload=page),
        AddDep(epoch=6, source="user", parent=7, child=8, weight=None, edge_type=""),
        AddDep(epoch=7, source="user", parent=8, child=9, weight=-0.25, edge_type="copy"),
        RemoveDep(epoch=8, source="user", parent=7, child=8),
        DeletePages(epoch=9, source="user", page_ids=np.array([7, 9], np.uint64)),
        Sparse(epoch=10, source="ü", batched=True, page_id=2**64 - 1, indices=idx, values=vals),
        AddDep(epoch=10, source="user", batched=True, parent=1, child=2, weight=1.0, edge_type="e"),
    ]
    with tempfile.TemporaryDirectory() as d:
        with TLog(d, fsync="never") as log:
            log.log_create_pages(1, 7, 3, shape, dtype, "gpu")
            log.log_sparse(2, 7, idx, vals)
            log.log_sparse_batch(3, bp, bi, bv, source="jit-ring")
            log.log_dense(4, 8, mask, page)  # full page form: only masked values are stored
            log.log_accumulate(5, 9, "log", page)
            log.log_add_dep(6, 7, 8)
            log.log_add_dep(7, 8, 9, weight=-0.25, edge_type="copy")
            log.log_remove_dep(8, 7, 8)
            log.log_delete_pages(9, [7, 9])
            with log.batch(10) as b:
                b.log_sparse(2**64 - 1, idx, vals, source="ü")
                b.log_add_dep(1, 2, 1, "e")
        got = read_records(d, "absolute")
        assert [_body(r) for r in got] == [_body(r) for r in expected]
        assert got.report.clean and got.report.last_epoch == 10
        assert got[3].payload().shape == shape and np.array_equal(got[3].payload()[mask], page[mask])
        # re-logging decoded records reproduces them exactly (timestamps included)
        with TLog(os.path.join(d, "copy"), fsync="never") as log2:
            for r in got:
                if not r.batched:
                    log2.append_record(r)
            with log2.batch(10) as b:  # the batched records of epoch 10 go back into one batch
                for r in got:
                    if r.batched:
                        b.append_record(r)
        again = read_records(os.path.join(d, "copy"), "absolute")
        assert [(_body(a)[:1] + _body(a)[4:], a.timestamp) for a in again] == [
            (_body(a)[:1] + _body(a)[4:], a.timestamp) for a in got
        ]


def test_decoded_arrays_views_and_copies(tmp_path):
    _write_sample(tmp_path)
    view = read_records(tmp_path)[1]
    assert not view.values.flags.writeable and view.values.ctypes.data % 8 == 0
    copied = read_records(tmp_path, copy=True)[1]
    assert copied.values.flags.writeable
    q = query_records(tmp_path, page_id=10, kinds=["sparse"])
    assert [r.epoch for r in q] == [2] and q[0].values.flags.writeable
    assert [r.kind for r in query_records(tmp_path, page_id=11)] == [Kind.CREATE_PAGES, Kind.SPARSE_BATCH, Kind.ADD_DEP, Kind.REMOVE_DEP]


# --------------------------------------------------------------------------------------------
# torn tails: truncation at every byte offset
# --------------------------------------------------------------------------------------------


def test_truncation_at_every_offset(tmp_path):
    src = tmp_path / "src"
    seg = _write_sample(src)
    data = seg.read_bytes()
    layout = _layout(src)
    assert any(b for *_, b in layout)  # the sample holds a batch
    work = tmp_path / "work"
    work.mkdir()
    target = work / seg.name
    for cut in range(len(data)):
        for p in work.iterdir():
            p.unlink()
        target.write_bytes(data[:cut])
        # committed: records ending by the cut; a batch only with its COMMIT
        exp = []
        pend = []
        for off, end, kind, epoch, batched in layout:
            if end > cut:
                break
            if kind == Kind.COMMIT:
                exp += pend
                pend = []
            elif batched:
                pend.append(off)
            else:
                exp.append(off)
        res = read_records(work)
        assert [r.offset for r in res] == exp, cut
        clean = (cut == 48 or cut in {end for _, end, *_ in layout}) and not pend
        assert (res.report.torn_tail is None) == clean, cut
        if not clean:
            with pytest.raises(CorruptLogError):
                read_records(work, "absolute")
        # reopening truncates the tail away and appending continues after the last record
        with TLog(work, fsync="never") as log:
            assert log.last_epoch == max([e for o, _, _, e, _ in layout if o in exp], default=None)
            log.log_remove_dep(9, 1, 2)
        res2 = read_records(work, "absolute")
        assert [r.offset for r in res2][:-1] == exp and res2[-1].epoch == 9


# --------------------------------------------------------------------------------------------
# corruption: a flipped byte anywhere
# --------------------------------------------------------------------------------------------


def test_flipped_byte_anywhere(tmp_path):
    src = tmp_path / "src"
    seg = _write_sample(src)
    data = seg.read_bytes()
    layout = _layout(src)
    offsets = [o for o, *_ in layout]
    batch_of = {}
    start = None
    for off, end, kind, epoch, batched in layout:
        if batched and start is None:
            start = off
        batch_of[off] = start if batched else None
        if kind == Kind.COMMIT:
            start = None
    last = layout[-1][0]
    work = tmp_path / "work"
    work.mkdir()
    target = work / seg.name
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        target.write_bytes(bytes(bad))
        rec = max([o for o in offsets if o <= pos], default=0) if pos >= 48 else 0
        drop_from = batch_of.get(rec) or rec if pos >= 48 else 0
        group = {o for o, *_ in layout if batch_of.get(o) is not None and batch_of[o] == batch_of.get(rec)} or {rec}
        if pos < 48:
            group = set()
        with pytest.raises(CorruptLogError) as ei:
            read_records(work, "absolute")
        assert ei.value.path == str(target) and ei.value.offset == rec, pos
        if pos >= 48 and rec == last:
            res = read_records(work)
            assert [r.offset for r in res] == [o for o, _, k, _, _ in layout if o < last and k != Kind.COMMIT]
            assert res.report.torn_tail.start == last
        else:
            with pytest.raises(CorruptLogError) as ei:
                read_records(work)
            assert ei.value.path == str(target) and ei.value.offset == rec, pos
            assert f"offset {rec}" in str(ei.value)
        pit = read_records(work, "point_in_time")
        assert [r.offset for r in pit] == [o for o, _, k, _, _ in layout if o < drop_from and k != Kind.COMMIT]
        assert pit.report.stopped_at.start == drop_from
        sk = read_records(work, "skip_corrupt")
        assert [r.offset for r in sk] == [o for o, _, k, _, _ in layout if o not in group and k != Kind.COMMIT], pos
        skipped = sk.report.skipped
        assert skipped and skipped[0].start == drop_from and skipped[0].start <= pos < skipped[-1].end


def test_huge_length_field_is_not_trusted(tmp_path):
    seg = _write_sample(tmp_path)
    layout = _layout(tmp_path)
    data = bytearray(seg.read_bytes())
    mid = layout[1][0]
    struct.pack_into("<I", data, mid, 0xFFFFFFF8)
    seg.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptLogError) as ei:
            read_records(tmp_path)
        assert ei.value.offset == mid and "exceeds" in ei.value.reason
        res = read_records(tmp_path, "skip_corrupt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert mid not in [r.offset for r in res] and len(res) == 5
    # the same on the last record is a torn tail
    data = bytearray(_write_sample(tmp_path / "b").read_bytes())
    last = _layout(tmp_path / "b")[-1][0]
    struct.pack_into("<I", data, last, 0xFFFFFFF8)
    (tmp_path / "b" / seg.name).write_bytes(bytes(data))
    assert read_records(tmp_path / "b").report.torn_tail.start == last


def test_bogus_array_shape_with_valid_crc_is_rejected(tmp_path):
    seg = _write_sample(tmp_path)
    off = _layout(tmp_path)[1][0]  # the SPARSE record
    data = bytearray(seg.read_bytes())
    length, *_, sl, _, _bl = R.RECORD_HEADER.unpack_from(data, off)
    body = off + 32 + sl + R.pad8(sl)
    struct.pack_into("<Q", data, body + 16, 2**62)  # the indices array's dim
    struct.pack_into("<I", data, off + 4, R.crc32c(bytes(data[off + 8 : off + length])))
    seg.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptLogError) as ei:
            read_records(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ei.value.offset == off and peak < 1 << 20


def test_batch_without_commit_in_the_middle_is_corruption(tmp_path):
    seg = _write_sample(tmp_path)
    layout = _layout(tmp_path)
    commit = next(x for x in layout if x[2] == Kind.COMMIT)
    start = next(x for x in layout if x[4])[0]
    data = seg.read_bytes()
    seg.write_bytes(data[: commit[0]] + data[commit[1] :])  # cut the COMMIT out
    with pytest.raises(CorruptLogError) as ei:
        read_records(tmp_path)
    assert ei.value.offset == start and "COMMIT" in ei.value.reason
    sk = read_records(tmp_path, "skip_corrupt")
    assert [r.kind for r in sk] == [Kind.CREATE_PAGES, Kind.SPARSE, Kind.DENSE, Kind.REMOVE_DEP]
    assert read_records(tmp_path, "point_in_time").report.stopped_at.start == start


def test_open_refuses_mid_log_corruption_and_keeps_bytes(tmp_path):
    seg = _write_sample(tmp_path)
    data = bytearray(seg.read_bytes())
    data[_layout(tmp_path)[1][0] + 40] ^= 1
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        TLog(tmp_path)
    assert seg.read_bytes() == bytes(data)
    # point-in-time recovery truncates at the damage and continues
    with TLog(tmp_path, recovery="point_in_time", fsync="never") as log:
        assert log.recovery_report.stopped_at is not None and log.last_epoch == 1
        log.log_remove_dep(6, 1, 2)
    assert [r.epoch for r in read_records(tmp_path, "absolute")] == [1, 6]


def test_missing_segment_and_unsupported_version(tmp_path):
    with TLog(tmp_path, fsync="never", segment_bytes=4096) as log:
        for e in range(200):
            log.log_sparse(e, 1, [0], np.zeros(1, np.float64))
    segs = list_segments(tmp_path)
    assert len(segs) >= 3
    segs[1][1].unlink()
    with pytest.raises(CorruptLogError) as ei:
        read_records(tmp_path)
    assert ei.value.path == str(segs[2][1]) and "missing" in ei.value.reason
    pit = read_records(tmp_path, "point_in_time")
    assert pit.report.stopped_at is not None and {r.segment for r in pit} == {segs[0][0]}
    sk = read_records(tmp_path, "skip_corrupt")
    assert sk.report.skipped and segs[1][0] not in {r.segment for r in sk}
    data = bytearray(segs[0][1].read_bytes())
    struct.pack_into("<H", data, 8, 99)
    struct.pack_into("<I", data, 44, R.crc32c(bytes(data[:44])))
    segs[0][1].write_bytes(bytes(data))
    with pytest.raises(SerializationError, match="version 99"):
        read_records(tmp_path, "skip_corrupt")


# --------------------------------------------------------------------------------------------
# crash: kill -9 while appending with fsync="always"
# --------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, types
    pkg = types.ModuleType("mmsb_jax"); pkg.__path__ = [sys.argv[1]]; sys.modules["mmsb_jax"] = pkg
    import numpy as np
    from mmsb_jax.log import TLog
    log = TLog(sys.argv[2], fsync="always", segment_bytes=4096)
    e = (log.last_epoch or 0) + 1
    vals = np.arange(40, dtype=np.float32)
    while True:
        if e % 3:
            log.log_sparse(e, e, np.arange(40, dtype=np.int32), vals)
        else:
            with log.batch(e) as b:
                b.log_sparse(e, [1], vals[:1])
                b.log_add_dep(e, e + 1)
        print(e, flush=True)
        e += 1
    """
)


def test_sigkill_keeps_every_acknowledged_record(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    d = tmp_path / "log"
    acked_all = 0
    for run, delay in enumerate([0.15, 0.3, 0.05, 0.4, 0.25]):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(REPO / "mmsb_jax"), str(d)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True)
        reader.start()
        deadline = time.time() + 10
        while not lines and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert lines, proc.stderr.read()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(5)
        acked = [int(x) for x in lines]
        res = read_records(d)
        epochs = sorted({r.epoch for r in res})
        assert set(acked) <= set(epochs), run
        assert epochs == list(range(1, len(epochs) + 1))  # a prefix: no holes
        for e in epochs:  # batches are all-or-nothing
            n = sum(r.epoch == e for r in res)
            assert n == (1 if e % 3 else 2)
        acked_all = max(acked_all, max(acked))
    assert len(list_segments(d)) > 1
    # after the last crash, reopening truncates any torn tail; then the log is strictly valid
    with TLog(d, fsync="never") as log:
        log.log_remove_dep(log.last_epoch + 1, 1, 2)
    assert read_records(d, "absolute").report.clean
    assert acked_all > 10


# --------------------------------------------------------------------------------------------
# segments, compaction, epochs, query, stats
# --------------------------------------------------------------------------------------------


def test_segment_rotation_and_drop(tmp_path):
    with TLog(tmp_path, fsync="batch", segment_bytes=4096) as log:
        for e in range(1, 301):
            if e % 10 == 0:
                with log.batch(e) as b:
                    for j in range(5):
                        b.log_sparse(e, [j], np.ones(1, np.float32))
            else:
                log.log_sparse(e, e, [0, 1], np.ones(2, np.float32))
        log.log_accumulate(301, 1, "real", np.zeros(2000, np.float32))  # > segment_bytes: own segment
        segs = log.segments()
        assert len(segs) > 5 and all(s.bytes <= 4096 for s in segs[:-1]) and segs[-1].records == 1
        res = log.read("absolute", include_commit=True)
        for idx, path in list_segments(tmp_path):
            first = min(r.epoch for r in res if r.segment == idx)
            assert R.SEGMENT_HEADER.unpack_from(path.read_bytes(), 0)[5] == first
        for e in range(10, 301, 10):  # batches never span segments
            assert len({r.segment for r in res if r.epoch == e}) == 1
        assert [r.epoch for r in log.read(start_epoch=250, end_epoch=255)] == [250] * 5 + [251, 252, 253, 254, 255]
        dropped = log.drop_segments_through(150)
        assert dropped and all(not p.exists() for p in dropped)
        rest = log.read("absolute")
        assert rest[0].epoch <= 151 and rest[-1].epoch == 301
        assert {r.epoch for r in rest} >= set(range(151, 302))
        assert log.stats()["first_epoch"] == rest[0].epoch
        log.log_sparse(302, 1, [0], np.ones(1, np.float32))
    assert read_records(tmp_path, "absolute")[-1].epoch == 302


def test_epochs_must_increase_and_reopen_continues(tmp_path):
    with TLog(tmp_path, fsync="batch") as log:
        log.log_sparse(4, 1, [0], np.ones(1, np.float32))
        log.log_sparse(5, 1, [1], np.ones(1, np.float32))
        for stale in (5, 4):  # one epoch per append: records sharing one go in a batch
            with pytest.raises(InvalidArgumentError, match="not after the last logged epoch 5"):
                log.log_sparse(stale, 1, [0], np.ones(1, np.float32))
        with pytest.raises(InvalidArgumentError, match="not after"):
            with log.batch(5) as b:
                b.log_sparse(1, [0], np.ones(1, np.float32))
        pos = log.position
    with TLog(tmp_path) as log:
        assert log.last_epoch == 5 and log.position == pos
        with pytest.raises(InvalidArgumentError):
            log.log_remove_dep(3, 1, 2)
        log.log_remove_dep(6, 1, 2)
        with pytest.raises(SerializationError, match="already"):
            TLog(tmp_path)
    assert [r.epoch for r in read_records(tmp_path, "absolute")] == [4, 5, 6]


def test_dropped_writer_flushes_and_releases_the_directory(tmp_path):
    log = TLog(tmp_path, fsync="batch", sync_interval=10.0)
    log.log_remove_dep(1, 1, 2)
    del log  # no close(): __del__ flushes and releases the lock
    with TLog(tmp_path) as log:
        assert log.last_epoch == 1


def test_batch_abort_and_invalid_input(tmp_path):
    with TLog(tmp_path, fsync="never") as log:
        with pytest.raises(RuntimeError), log.batch(1) as b:
            b.log_add_dep(1, 2)
            raise RuntimeError("boom")
        with log.batch(2):
            pass  # empty batch writes nothing
        bad = [
            lambda: log.log_sparse(3, -1, [0], [1.0]),
            lambda: log.log_sparse(3, 1, [0, 1], [1.0]),
            lambda: log.log_sparse(3, 1, np.array([2**40]), [1.0]),
            lambda: log.log_sparse(3, 1, [0], np.array(["x"])),
            lambda: log.log_sparse(3, 1, [0], np.array([object()])),
            lambda: log.log_sparse_batch(3, [1, 2], np.zeros((2, 2), np.int32), np.zeros((2, 3))),
            lambda: log.log_dense(3, 1, np.ones(3, bool), np.ones(2)),
            lambda: log.log_dense(3, 1, np.ones(3), np.ones(3)),
            lambda: log.log_create_pages(3, 0, 1, (2,), "object", "cpu"),
            lambda: log.log_create_pages(3, 0, 1, (-2,), "float32", "cpu"),
            lambda: log.log_add_dep(-1, 1, 2),
            lambda: log.log_add_dep(3, 1, 2, weight="heavy"),
            lambda: log.log_remove_dep(3, 1, 2, source="x" * 300),
        ]
        for f in bad:
            with pytest.raises(InvalidArgumentError):
                f()
    assert len(read_records(tmp_path)) == 0


def test_query_and_stats(tmp_path):
    with TLog(tmp_path, fsync="always") as log:
        log.log_create_pages(1, 100, 10, (4,), "uint8", "cpu")
        log.log_sparse_batch(2, [100, 101, 102], np.zeros((3, 1), np.int32), np.ones((3, 1), np.uint8), source="jit-ring")
        log.log_sparse(3, 105, [1], np.ones(1, np.uint8))
        log.log_add_dep(4, 101, 105)
        with log.batch(5, source="demo") as b:
            b.log_delete_pages([101])
            b.log_remove_dep(101, 105)
        assert [r.kind for r in log.query(page_id=101)] == [
            Kind.CREATE_PAGES, Kind.SPARSE_BATCH, Kind.ADD_DEP, Kind.DELETE_PAGES, Kind.REMOVE_DEP,
        ]
        assert [r.epoch for r in log.query(page_id=105, epochs=(3, 4))] == [3, 4]
        assert [r.kind for r in log.query(source="jit-ring")] == [Kind.SPARSE_BATCH]
        assert [r.kind for r in log.query(kinds=[Kind.COMMIT, "add_dep"])] == [Kind.ADD_DEP, Kind.COMMIT]
        assert log.query(page_id=99) == []
        st_ = log.stats()
        assert st_["records"] == 7 and st_["records_by_kind"]["COMMIT"] == 1
        assert st_["first_epoch"] == 1 and st_["last_epoch"] == 5 and st_["segments"] == 1
        assert st_["fsyncs"] >= 5 and st_["bytes"] == list_segments(tmp_path)[0][1].stat().st_size
    with TLog(tmp_path) as log:  # counts survive reopening
        assert log.stats()["records_by_kind"] == st_["records_by_kind"]
    assert len(query_records(tmp_path, page_id=100)) == 2


def test_fsync_policies(tmp_path):
    for mode in ("always", "batch", "never"):
        d = tmp_path / mode
        with TLog(d, fsync=mode, sync_interval=0.001) as log:
            for e in range(20):
                log.log_sparse(e, 1, [0], np.ones(1, np.float32))
            if mode == "batch":
                time.sleep(0.05)  # the background flusher syncs within ~sync_interval
                assert log.stats()["fsyncs"] >= 1 and log.stats()["buffered_bytes"] == 0
            log.flush()
            assert list_segments(d)[0][1].stat().st_size == log.position.offset
            fs = log.stats()["fsyncs"]
        assert (fs >= 20) if mode == "always" else (fs == 0 if mode == "never" else fs >= 1)


def test_concurrent_appends_from_threads(tmp_path):
    n_threads, n = 4, 300
    with TLog(tmp_path, fsync="batch", buffer_bytes=4096, segment_bytes=16384) as log:

        epochs = itertools.count(1)
        assign = threading.Lock()  # epochs are assigned and logged under one lock, as the shell does

        def work(t):
            for i in range(n):
                with assign:
                    e = next(epochs)
                    if t == 0 and i % 3 == 0:
                        with log.batch(e, source=f"t{t}") as b:
                            b.log_sparse(t * 10000 + i, [i], np.full(1, i, np.int64))
                            b.log_add_dep(t, i)
                    else:
                        log.log_sparse(e, t * 10000 + i, [i], np.full(1, i, np.int64), source=f"t{t}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    res = read_records(tmp_path, "absolute")
    assert res.report.clean and len(list_segments(tmp_path)) > 1
    for t in range(n_threads):
        mine = [r for r in res if r.source == f"t{t}" and r.kind == Kind.SPARSE]
        assert [r.page_id - t * 10000 for r in mine] == list(range(n))
        assert all(int(r.values[0]) == r.page_id - t * 10000 for r in mine)


def test_never_unpickles():
    for path in sorted((REPO / "mmsb_jax" / "log").glob("*.py")):
        tree = parse_source(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(m.split(".")[0] in ("pickle", "marshal", "shelve", "dill") for m in mods)
            if isinstance(node, ast.keyword):
                assert node.arg != "allow_pickle"
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads"):  # json only
                assert isinstance(node.value, ast.Name) and node.value.id == "json", (path.name, ast.dump(node))


# --------------------------------------------------------------------------------------------
# epoch order: swapped, duplicated and misplaced intact records are damage
# --------------------------------------------------------------------------------------------


def _rewrite(path, layout, order):
    """Rewrite the segment with its records (by index into ``layout``) in ``order``."""
    data = path.read_bytes()
    head = data[: layout[0][0]]
    path.write_bytes(head + b"".join(data[layout[i][0] : layout[i][1]] for i in order))


@pytest.mark.parametrize("case", ["swap_last_two", "duplicate_last", "swap_first_two"])
def test_reordered_intact_records_are_damage(tmp_path, case):
    path = _write_sample(tmp_path)
    lay = _layout(tmp_path)
    n = len(lay)
    order = {
        "swap_last_two": list(range(n - 2)) + [n - 1, n - 2],
        "duplicate_last": list(range(n)) + [n - 1],
        "swap_first_two": [1, 0] + list(range(2, n)),
    }[case]
    _rewrite(path, lay, order)
    for mode in ("torn_tail", "absolute"):
        with pytest.raises(CorruptLogError, match="out of order|segment header names") as e:
            read_records(tmp_path, mode)
        assert e.value.path == str(path) and e.value.offset >= lay[0][0]
    with pytest.raises(CorruptLogError):  # the writer refuses to continue such a log
        TLog(tmp_path)
    pit = read_records(tmp_path, "point_in_time")
    epochs = [r.epoch for r in pit]
    assert epochs == sorted(set(epochs)) or all(a <= b for a, b in zip(epochs, epochs[1:]))
    assert pit.report.stopped_at is not None
    skip = read_records(tmp_path, "skip_corrupt")
    units = [r.epoch for r in skip if not r.batched] + sorted({r.epoch for r in skip if r.batched})
    assert sorted(units) == sorted(set(units)) and skip.report.skipped


def test_read_to_an_epoch_stops_after_it(tmp_path):
    """Damage after the last requested record is not read; damage before it is."""
    path = _write_sample(tmp_path)
    lay = _layout(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\xff" * 32)  # garbage after epoch 5, the last record
    assert [r.epoch for r in read_records(tmp_path, "torn_tail", end_epoch=4)][-1] == 4
    assert read_records(tmp_path, "absolute", end_epoch=5)[-1].epoch == 5  # stops right after 5
    with pytest.raises(CorruptLogError):
        read_records(tmp_path, "absolute")
    # a flipped byte inside epoch 2's record fails any read that needs epoch >= 2
    data = bytearray(path.read_bytes())
    off = next(o for o, _, _, e, _ in lay if e == 2)
    data[off + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [r.epoch for r in read_records(tmp_path, "absolute", end_epoch=1)] == [1]
    with pytest.raises(CorruptLogError):
        read_records(tmp_path, "torn_tail", end_epoch=4)


def test_garbage_after_a_middle_segment_is_not_a_stop(tmp_path):
    """32 bytes of 0xFF after segment 1 of 3: reading to an epoch in segment 2 raises (torn_tail)
    instead of silently stopping at the end of segment 1."""
    with TLog(tmp_path, fsync="never", segment_bytes=4096) as log:
        for e in range(1, 120):
            log.log_sparse(e, 1, np.arange(16), np.ones(16, np.float32))
    segs = list_segments(tmp_path)
    assert len(segs) >= 3
    with open(segs[0][1], "ab") as f:
        f.write(b"\xff" * 32)
    last_in_second = read_records(tmp_path, "skip_corrupt").records
    target = max(r.epoch for r in last_in_second if r.segment == segs[1][0])
    with pytest.raises(CorruptLogError, match=str(segs[0][1].name)):
        read_records(tmp_path, "torn_tail", end_epoch=target)


def test_batch_methods_mirror_the_log_methods():
    """Every ``TLog.log_*`` method has its ``TLogBatch`` twin (from one table), and each takes
    the arguments of the body encoder it frames, in its order."""
    import inspect

    from mmsb_jax.log._batch import RECORD_BODIES
    from mmsb_jax.log._writer import TLog, TLogBatch

    names = sorted(n for n in dir(TLog) if n.startswith("log_"))
    assert names == sorted(RECORD_BODIES)
    for name in names:
        single = [p for p in inspect.signature(getattr(TLog, name)).parameters if p not in ("self", "epoch", "source")]
        body = list(inspect.signature(RECORD_BODIES[name]).parameters)
        batch = [p for p in inspect.signature(getattr(TLogBatch, name)).parameters if p not in ("self", "source")]
        assert single == body == batch, name


# ---------------------------------------------------------------- SPARSE_BATCH's shared index row
def _decode(kind, parts, copy=True):
    from mmsb_jax.log._decode import decode_body

    body = b"".join(bytes(p) for p in parts)
    common = dict(epoch=1, timestamp=0, source="", batched=False, segment=0, offset=0)
    return body, decode_body(kind, body, 0, len(body), copy, common)


@pytest.mark.parametrize("n", [2, 3, 64])
def test_sparse_batch_logs_one_shared_index_row(n):
    """Rows that all index the same elements (whole-page rewrites) log one row; it decodes
    as the (n, k) indices it stands for, and the body shrinks by (n - 1) * k * 4 bytes."""
    rng = np.random.default_rng(n)
    k = 256
    ind = np.tile(np.arange(k, dtype=np.int32), (n, 1))
    vals = rng.integers(0, 255, (n, k)).astype(np.uint8)
    pids = np.arange(n, dtype=np.uint64)
    body, rec = _decode(*R.body_sparse_batch(pids, ind, vals))
    assert rec.indices.shape == (n, k) and np.array_equal(rec.indices, ind)
    assert np.array_equal(rec.values, vals) and np.array_equal(rec.page_ids, pids)
    scattered = ind.copy()
    scattered[-1, :2] = scattered[-1, 1::-1]  # one row differs: every row is logged
    full, rec2 = _decode(*R.body_sparse_batch(pids, scattered, vals))
    assert np.array_equal(rec2.indices, scattered)
    assert len(full) - len(body) == (n - 1) * k * 4


@pytest.mark.parametrize("shape", [(1, 3), (2, 4), (4, 4)])
def test_sparse_batch_index_rows_that_fit_no_reading_are_refused(shape):
    """Indices of (1, k') with k' != k, or (m, k) with 1 < m != n, are damage, not a shared row."""
    from mmsb_jax.log._encode import BadRecord, _arr_parts

    parts: list = []
    _arr_parts(np.arange(3, dtype=np.uint64), parts)
    _arr_parts(np.zeros(shape, np.int32), parts)
    _arr_parts(np.zeros((3, 4), np.uint8), parts)
    with pytest.raises(BadRecord):
        _decode(Kind.SPARSE_BATCH, parts)


def test_whole_page_rewrites_replay_from_shared_rows(tmp_path):
    """route_sparse_batch of whole-page rewrites logs one shared row; replay and reopen
    rebuild the same digest, and the log holds no per-row indices."""
    import mmsb_jax as mmsb

    path = str(tmp_path / "s")
    st = mmsb.mmsb_start(path, fsync="batch")
    ids = mmsb.create_pages(st, 8, size=1024)
    rng = np.random.default_rng(0)
    ind = np.tile(np.arange(1024, dtype=np.int32), (6, 1))
    for _ in range(3):
        rows = rng.choice(8, 6)  # repeats: the last rewrite of a page wins
        mmsb.route_sparse_batch(st, ids[rows], ind, rng.integers(0, 255, (6, 1024)).astype(np.uint8))
    digest = mmsb.state_digest(st)
    mmsb.mmsb_stop(st)
    recs = [r for r in read_records(os.path.join(path, "log")).records if isinstance(r, SparseBatch)]
    assert len(recs) == 3 and all(r.indices.strides[0] == 0 for r in recs)
    log_dir = os.path.join(path, "log")
    assert sum(os.path.getsize(os.path.join(log_dir, f)) for f in os.listdir(log_dir)) < 3 * 6 * 1024 * 2
    assert mmsb.replay_to_epoch(path, None).digest() == digest
    st = mmsb.mmsb_open(path)
    assert mmsb.state_digest(st) == digest
    mmsb.mmsb_stop(st)


def test_replay_of_runs_mixing_shared_rows_equals_the_live_state(tmp_path):
    """Records with different shared rows, and with full index rows, in one replay run: the
    run takes one broadcast row only when every record shares the same one."""
    import mmsb_jax as mmsb

    path = str(tmp_path / "s")
    st = mmsb.mmsb_start(path, fsync="batch")
    ids = mmsb.create_pages(st, 6, size=8)
    rng = np.random.default_rng(1)
    fwd = np.tile(np.arange(8, dtype=np.int32), (4, 1))
    rows = [fwd, fwd[:, ::-1].copy(), fwd, rng.integers(0, 8, (4, 8)).astype(np.int32), fwd[:, :3].copy()]
    for ind in rows:
        mmsb.route_sparse_batch(st, ids[rng.choice(6, 4)], ind, rng.integers(0, 255, ind.shape).astype(np.uint8))
    digest = mmsb.state_digest(st)
    mmsb.mmsb_stop(st)
    assert mmsb.replay_to_epoch(path, None).digest() == digest


def test_a_broadcast_index_row_is_checked_and_refused_by_entry():
    """A (n, k) index array that is one row broadcast (as a shared-row record reads) is
    checked on that row: an index past the page is refused, naming the first entry."""
    import mmsb_jax as mmsb

    st = mmsb.mmsb_start()
    ids = mmsb.create_pages(st, 3, size=4)
    mmsb.create_pages(st, 2, size=8)  # a second pool: the multi-pool check path
    ind = np.broadcast_to(np.array([[0, 5]], np.int32), (3, 2))
    digest = mmsb.state_digest(st)
    with pytest.raises(mmsb.InvalidDeltaError, match=r"batch entry 0 \(page 0\): index 5 is out of range"):
        mmsb.route_sparse_batch(st, ids, ind, np.ones((3, 2), np.uint8))
    with pytest.raises(mmsb.InvalidDeltaError, match=r"batch entry 1 \(page 0\): index 5 is out of range"):
        mmsb.route_sparse_batch(st, np.array([4, 0, 1]), ind, np.ones((3, 2), np.uint8))
    assert mmsb.state_digest(st) == digest
    ok = np.broadcast_to(np.array([[0, 3]], np.int32), (3, 2))
    mmsb.route_sparse_batch(st, ids, ok, np.full((3, 2), 2, np.uint8))
    assert mmsb.query_page(st, ids[2]).tolist() == [2, 0, 0, 2]
    mmsb.mmsb_stop(st)
