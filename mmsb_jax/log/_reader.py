"""Reading the transaction log: segments in order, the four recovery modes, queries.

Pure Python + numpy + ``crc32c``; never pickles and never trusts a length field beyond the
bytes present in the file (the record checks are :mod:`mmsb_jax.log._scan`, what a read
returns :mod:`mmsb_jax.log._report`). The writer is :mod:`mmsb_jax.log._writer`; the byte
format is specified in ``docs/tlog-format.md``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ._decode import decode_body
from ._records import LogRecord
from .._checks import is_int
from .._errors import (
    CorruptLogError,
    InvalidArgumentError,
)
from ._report import (
    LogPosition,
    ReadResult,
    RecoveryReport,
    ResumePoint,
    SkippedRange,
    _mode,
)
from ._scan import _check, _check_segment_header, _header_first_epoch, _next_valid, _stamp_of
from ._encode import (
    FLAG_BATCH,
    HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    BadRecord,
    Kind,
    kind_of,
    pad8,
)

SEGMENT_RE = re.compile(r"^log-(\d{8,})\.mmsblog$")
_Q = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def segment_path(directory: str | os.PathLike, index: int) -> Path:
    return Path(directory) / f"log-{index:08d}.mmsblog"


def list_segments(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(index, path)`` of every segment file in ``directory``, by index (other files ignored)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for name in os.listdir(d):
        m = SEGMENT_RE.match(name)
        if m:
            out.append((int(m.group(1)), d / name))
    out.sort()
    return out


def log_bytes_from(directory: str | os.PathLike, segment: int, offset: int) -> int:
    """Bytes of the log in ``directory`` from ``offset`` of segment ``segment`` to its end."""
    total = 0
    for index, path in list_segments(directory):
        if index >= segment:
            try:
                total += max(path.stat().st_size - (offset if index == segment else 0), 0)
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


class _Restart(Exception):
    """A read that started at a resume point met something other than intact records: the
    segment is read again from its first record, where the recovery mode handles it."""


def first_logged_epoch(directory) -> int | None:
    """The first epoch the oldest segment holds (from its header), or None for an empty log."""
    segs = list_segments(directory)
    return _header_first_epoch(segs[0][1], segs[0][0]) if segs else None


class _Reader:
    """One pass over a log directory (or one segment) applying a recovery mode."""

    def __init__(self, mode, start_epoch=None, end_epoch=None, include_commit=False, copy=False, decode=True):
        self.mode = mode
        self.lo = 0 if start_epoch is None else int(start_epoch)
        self.hi = None if end_epoch is None else int(end_epoch)
        self.include_commit = include_commit
        self.copy = copy
        self.decode = decode
        self.records: list[LogRecord] = []
        self.report = RecoveryReport(mode=mode)
        self.done = False
        self.last_unit: int | None = None  # epoch of the last committed unit (record or batch) read
        self._sources: dict[bytes, str] = {}
        self.last_record: tuple[int, int, int] | None = None  # (end offset, length, header CRC)

    # -- problems ------------------------------------------------------------------------
    def _bad(self, path, buf, mv, off, start, reason, is_last, hint=None):
        """Broken bytes at ``off`` (dropping from ``start``). Returns resume offset or None."""
        size = len(buf)
        mode = self.mode
        if mode == "absolute":
            raise CorruptLogError(path, off, reason)
        if mode == "torn_tail":
            if is_last and _next_valid(buf, mv, off + 8, size, hint) is None:
                self.report.torn_tail = SkippedRange(path, start, size, reason)
                return None
            raise CorruptLogError(path, off, reason + ("" if is_last else " (not the last segment)"))
        if mode == "point_in_time":
            self.report.stopped_at = SkippedRange(path, start, size, reason)
            self.done = True
            return None
        nxt = _next_valid(buf, mv, off + 8, size)  # no hint: resync on the *first* intact record
        self.report.skipped.append(SkippedRange(path, start, size if nxt is None else nxt, reason))
        return nxt

    def _logical(self, path, start, end, size, reason) -> bool:
        """Intact records that do not form a valid batch. Returns False to stop the segment."""
        if self.mode in ("absolute", "torn_tail"):
            raise CorruptLogError(path, start, reason)
        if self.mode == "point_in_time":
            self.report.stopped_at = SkippedRange(path, start, size, reason)
            self.done = True
            return False
        self.report.skipped.append(SkippedRange(path, start, end, reason))
        return True

    def _source(self, buf, p, n) -> str:
        key = buf[p : p + n]
        s = self._sources.get(key)
        if s is None:
            s = self._sources[key] = key.decode("utf-8", "replace")
        return s

    # -- one segment -----------------------------------------------------------------------
    def segment(self, index: int, path: Path, buf: bytes, is_last: bool, base: int = 0) -> None:
        """Read the records of one segment file. ``base > 0``: ``buf`` holds the file from byte
        ``base`` on, a record boundary (a checked resume point); anything but intact records
        there raises :class:`_Restart`."""
        spath = str(path)
        rep = self.report
        rep.segments.append(spath)
        size = len(buf)
        mv = memoryview(buf)
        header_epoch = None
        if base:
            off = 0
        else:
            try:
                header_epoch = _check_segment_header(buf, index, spath)
                off = SEGMENT_HEADER_SIZE
            except BadRecord as e:
                off = self._bad(spath, buf, mv, 0, 0, f"bad segment header: {e}", is_last, SEGMENT_HEADER_SIZE)
                if off is None:
                    rep.end = LogPosition(index, 0)
                    return
        good = off if off == SEGMENT_HEADER_SIZE or base else 0
        lo, hi, out, counts = self.lo, self.hi, self.records, rep.kind_counts
        decode, copy, include_commit = self.decode, self.copy, self.include_commit
        pending: list = []
        pkinds: list = []
        pstart = pepoch = -1
        first_unit = True  # the segment header names the epoch of its first record
        while off < size:
            try:
                length, epoch, ts, kind, flags, sl, bl = _check(buf, mv, off, size)
                if hi is not None and epoch > hi and not pkinds:
                    self.done = True  # every record up to end_epoch has been read
                    break
                p = off + HEADER_SIZE + sl + pad8(sl)
                rec = None
                if kind == Kind.COMMIT or (decode and epoch >= lo):
                    common = {
                        "epoch": epoch,
                        "timestamp": ts,
                        "source": self._source(buf, off + HEADER_SIZE, sl),
                        "batched": bool(flags & FLAG_BATCH),
                        "segment": index,
                        "offset": base + off,
                    }
                    rec = decode_body(kind, buf, p, p + bl, copy, common)
            except BadRecord as e:
                if base:
                    raise _Restart from None
                start = pstart if pkinds else off
                pending, pkinds = [], []
                hint = None
                if size - off >= 8:
                    (claimed,) = _U32.unpack_from(buf, off)
                    hint = off + claimed if claimed >= HEADER_SIZE else None
                nxt = self._bad(spath, buf, mv, off, start, str(e), is_last, hint)
                if nxt is None:
                    break
                off = nxt
                continue
            if kind == Kind.COMMIT:
                ok = flags & FLAG_BATCH and pkinds and pepoch == epoch and rec.count == len(pkinds)
                if not ok:
                    if base:
                        raise _Restart
                    start = pstart if pkinds else off
                    n = len(pkinds)
                    pending, pkinds = [], []
                    if not self._logical(
                        spath, start, off + length, size,
                        f"COMMIT (epoch {epoch}, count {rec.count}) does not close a batch "
                        f"(pending: {n} records of epoch {pepoch if n else None})",
                    ):
                        break
                    off += length
                    continue
                unit = (pstart, off + length)
            else:
                if pkinds and (not flags & FLAG_BATCH or pepoch != epoch):
                    if base:
                        raise _Restart
                    n = len(pkinds)
                    pending, pkinds = [], []
                    if not self._logical(
                        spath, pstart, off, size, f"batch of {n} records at epoch {pepoch} has no COMMIT"
                    ):
                        break
                if flags & FLAG_BATCH:
                    if not pkinds:
                        pstart, pepoch = off, epoch
                    pkinds.append(kind)
                    pending.append(rec)
                    off += length
                    continue
                unit = (off, off + length)
            # a committed unit (one record, or a batch and its COMMIT): its epoch must follow
            # the previous unit's and, first in a segment, be the one the segment header names
            reason = None
            if self.last_unit is not None and epoch <= self.last_unit:
                reason = f"records out of order: epoch {epoch} follows epoch {self.last_unit}"
            elif first_unit and unit[0] == SEGMENT_HEADER_SIZE and header_epoch is not None and epoch != header_epoch:
                reason = f"first record has epoch {epoch}, but the segment header names epoch {header_epoch}"
            first_unit = False
            if reason is not None:
                if base:
                    raise _Restart
                pending, pkinds = [], []
                if not self._logical(spath, unit[0], unit[1], size, reason):
                    break
                off = unit[1]
                continue
            if kind == Kind.COMMIT:
                if epoch >= lo:
                    out.extend(r for r in pending if r is not None)
                    if include_commit:
                        out.append(rec)
                for k in pkinds:
                    counts[k] = counts.get(k, 0) + 1
                pending, pkinds = [], []
            elif rec is not None:
                out.append(rec)
            counts[kind] = counts.get(kind, 0) + 1
            good = off + length
            self.last_record = (base + good, length, _U32.unpack_from(buf, off + 4)[0])
            rep.last_epoch = self.last_unit = epoch
            off += length
            if hi is not None and epoch >= hi:
                self.done = True  # epochs only increase: nothing after this is <= end_epoch
                break
        if pkinds and not self.done:
            if base:
                raise _Restart
            reason = f"batch of {len(pkinds)} records at epoch {pepoch} has no COMMIT"
            if is_last and self.mode == "torn_tail":
                rep.torn_tail = SkippedRange(spath, pstart, size, reason + " at the end of the log")
            else:
                self._logical(spath, pstart, off, size, reason)
        rep.end = LogPosition(index, base + good)

    def _resumed(self, index: int, path: Path, point: ResumePoint, is_last: bool) -> bool:
        """Read segment ``index`` (whose header carries the point's stamp) from ``point`` if
        the bytes from there are intact records; False (nothing changed) otherwise."""
        off, plen = point.offset, point.prev_length
        if off < SEGMENT_HEADER_SIZE or off & 7 or (plen == 0) != (off == SEGMENT_HEADER_SIZE):
            return False
        try:
            with open(path, "rb") as f:
                if off > os.fstat(f.fileno()).st_size or (plen and (plen > off - SEGMENT_HEADER_SIZE or plen & 7)):
                    return False
                f.seek(off - plen)
                prev = f.read(plen)  # (read apart from the rest: slicing 100 MB of bytes copies them)
                buf = f.read()
        except OSError:
            return False
        if plen:  # the record the writer last wrote before the point must end exactly there
            try:
                length = _check(prev, memoryview(prev), 0, plen)[0]
            except BadRecord:
                return False
            if length != plen or _U32.unpack_from(prev, 4)[0] != point.prev_crc:
                return False
        rep = self.report
        saved = (len(self.records), dict(rep.kind_counts), len(rep.segments), rep.end, rep.last_epoch,
                 self.last_unit, self.done)
        try:
            self.segment(index, path, buf, is_last, base=point.offset)
            return True
        except _Restart:
            n, counts, nseg, rep.end, rep.last_epoch, self.last_unit, self.done = saved
            del self.records[n:]
            del rep.segments[nseg:]
            rep.kind_counts.clear()
            rep.kind_counts.update(counts)
            return False

    # -- a directory ---------------------------------------------------------------------
    def run(self, directory, start_at: ResumePoint | None = None) -> None:
        segs = list_segments(directory)
        if start_at is not None:
            at = [p for i, p in segs if i == start_at.segment]
            if at and _stamp_of(at[0], start_at.segment) == start_at.created_ns:
                segs = [(i, p) for i, p in segs if i >= start_at.segment]  # the point's segment file
            else:
                start_at = None  # not this log's point (or its segment is gone): read it all
        firsts: list[int | None] = []
        if self.lo or self.hi is not None:
            firsts = [_header_first_epoch(p, i) for i, p in segs]
        prev = None
        for n, (index, path) in enumerate(segs):
            if self.done:
                break
            is_last = n == len(segs) - 1
            if prev is not None and index != prev + 1:
                reason = f"missing segment(s) {prev + 1}..{index - 1}"
                if self.mode == "point_in_time":
                    self.report.stopped_at = SkippedRange(str(path), 0, 0, reason)
                    break
                if self.mode == "skip_corrupt":
                    self.report.skipped.append(SkippedRange(str(segment_path(directory, prev + 1)), 0, 0, reason))
                else:
                    raise CorruptLogError(path, 0, reason)
            prev = index
            if firsts:
                if self.hi is not None and firsts[n] is not None and firsts[n] > self.hi:
                    break
                if not is_last and firsts[n + 1] is not None and firsts[n + 1] < self.lo:
                    continue  # every record of this segment is older than start_epoch
            if start_at is not None and index == start_at.segment and self._resumed(index, path, start_at, is_last):
                continue
            with open(path, "rb") as f:
                buf = f.read()
            self.segment(index, path, buf, is_last)


def read_records(
    directory: str | os.PathLike,
    mode: str = "torn_tail",
    start_epoch: int | None = None,
    end_epoch: int | None = None,
    *,
    include_commit: bool = False,
    copy: bool = False,
    start_at: ResumePoint | None = None,
) -> ReadResult:
    """Read every committed record with ``start_epoch <= epoch <= end_epoch``, in log order.

    Modes (RocksDB WAL recovery modes; long RocksDB names are accepted as aliases):

    * ``"torn_tail"`` (default, = ``tolerate_corrupted_tail_records``): an incomplete or bad
      record at the end of the last segment (and a batch without its COMMIT there) is dropped
      (``report.torn_tail``); any other damage raises :class:`CorruptLogError`.
    * ``"absolute"``: any damage, including a torn tail, raises.
    * ``"point_in_time"``: stops at the first damage (``report.stopped_at``); no error.
    * ``"skip_corrupt"``: skips damaged bytes (resyncing on the next intact record) and
      incomplete batches, listing them in ``report.skipped``; no error.

    Epochs strictly increase from one committed unit (a record, or a batch with its COMMIT) to
    the next, and the first unit of a segment has the epoch its header names; a unit that breaks
    either rule is damage (records swapped or duplicated), treated like a bad record by the mode
    (``torn_tail`` and ``absolute`` raise). The read stops right after the unit of epoch
    ``end_epoch``, or before the first one past it, so bytes after that are not looked at.
    Arrays are read-only views into the segment bytes unless ``copy=True``. COMMIT records are
    returned only if ``include_commit``.
    A missing directory reads as an empty log.

    ``start_at``: a :class:`ResumePoint` a writer reported (e.g. the one a checkpoint keeps in
    its ``log_resume.json``): the segments before its segment are not read, and that segment
    is read from the point on (not checked before the record that ends there) when its header
    still carries the point's stamp, that record (length and CRC) ends exactly at the point,
    and intact records follow; otherwise from its first record, as without it.
    ``report.kind_counts`` then counts the records from where the read started.
    """
    r = _Reader(_mode(mode), start_epoch, end_epoch, include_commit, copy)
    r.run(directory, start_at)
    r.report.kind_counts = dict(r.report.kind_counts)
    return ReadResult(r.records, r.report)


def _filter(records, page_id=None, epochs=None, source=None, kinds=None) -> list[LogRecord]:
    ks = None if kinds is None else {kind_of(k) for k in ([kinds] if isinstance(kinds, (str, int)) else kinds)}
    out = []
    for r in records:
        if ks is not None and r.kind not in ks:
            continue
        if source is not None and r.source != source:
            continue
        if page_id is not None and not r.touches(page_id):
            continue
        out.append(_copy_record(r))
    return out


def _copy_record(r: LogRecord) -> LogRecord:
    r = dataclasses.replace(r)
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, np.ndarray) and not v.flags.writeable:
            setattr(r, f.name, v.copy())
    return r


def _epoch_range(epochs) -> tuple[int | None, int | None]:
    if epochs is None:
        return None, None
    try:
        a, b = epochs
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"epochs={epochs!r} must be a pair (first, last), inclusive") from None
    for e in (a, b):
        if e is not None and (not is_int(e) or e < 0):
            raise InvalidArgumentError(f"epochs={epochs!r}: {e!r} is not a non-negative int (or None)")
    if a is not None and b is not None and a > b:
        raise InvalidArgumentError(f"epochs={epochs!r} is reversed: first {a} > last {b}")
    return a, b


def query_records(
    directory: str | os.PathLike,
    page_id: int | None = None,
    epochs: tuple[int | None, int | None] | None = None,
    source: str | None = None,
    kinds: Iterable[Kind | int | str] | Kind | int | str | None = None,
    *,
    mode: str = "torn_tail",
) -> list[LogRecord]:
    """Committed records matching every given filter (arrays copied, safe to keep).

    ``page_id`` matches records that touch the page: DENSE/SPARSE/ACCUMULATE of it, a
    SPARSE_BATCH or DELETE_PAGES containing it, a CREATE_PAGES range holding it, an edge
    with it as parent or child. ``epochs=(a, b)`` is inclusive; either end may be None.
    """
    a, b = _epoch_range(epochs)
    res = read_records(directory, mode, a, b, include_commit=kinds is not None)
    return _filter(res.records, page_id, epochs, source, kinds)


