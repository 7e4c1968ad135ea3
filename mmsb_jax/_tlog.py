"""Durable transaction log (TLog): append-only, CRC-framed, segmented; RocksDB-like recovery.

Writer: :class:`TLog` (one per directory, thread-safe, ``fsync="always" | "batch" | "never"``).
Reader: :func:`read_records` (modes ``"torn_tail"`` (default), ``"absolute"``,
``"point_in_time"``, ``"skip_corrupt"``) and :func:`query_records`. Record types live in
:mod:`mmsb_jax._records`; the byte format is specified in ``docs/tlog-format.md``.

Pure Python + numpy + ``crc32c``: no jax, never pickles, never trusts a length field beyond
the bytes actually present in the file.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import re
import struct
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np

from ._errors import (
    CorruptLogError,
    InvalidArgumentError,
    SerializationError,
    StateClosedError,
)
from ._records import (
    FLAG_BATCH,
    HEADER_SIZE,
    KINDS,
    MAGIC,
    RECORD_HEADER,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    U64_MAX,
    VERSION,
    Accumulate,
    AddDep,
    BadRecord,
    Commit,
    CreatePages,
    DeletePages,
    Dense,
    Kind,
    LogRecord,
    RemoveDep,
    Sparse,
    SparseBatch,
    body_accumulate,
    body_add_dep,
    body_commit,
    body_create_pages,
    body_delete_pages,
    body_dense,
    body_dense_packed,
    body_remove_dep,
    body_sparse,
    body_sparse_batch,
    crc32c,
    decode_body,
    frame,
    kind_of,
    pad8,
    segment_header,
    source_bytes,
)

__all__ = [
    "MODES",
    "Accumulate",
    "AddDep",
    "Commit",
    "CreatePages",
    "DeletePages",
    "Dense",
    "Kind",
    "LogPosition",
    "LogRecord",
    "ReadResult",
    "RecoveryReport",
    "RemoveDep",
    "SegmentInfo",
    "SkippedRange",
    "Sparse",
    "SparseBatch",
    "TLog",
    "TLogBatch",
    "list_segments",
    "query_records",
    "read_records",
]

SEGMENT_RE = re.compile(r"^log-(\d{8,})\.mmsblog$")
MODES = ("torn_tail", "absolute", "point_in_time", "skip_corrupt")
_MODE_ALIASES = {
    "torn_tail": "torn_tail",
    "tolerate_corrupted_tail_records": "torn_tail",
    "absolute": "absolute",
    "absolute_consistency": "absolute",
    "point_in_time": "point_in_time",
    "skip_corrupt": "skip_corrupt",
    "skip_any_corrupted_records": "skip_corrupt",
}
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


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


_datasync = getattr(os, "fdatasync", os.fsync)
_writev = getattr(os, "writev", None) or (lambda fd, bufs: os.write(fd, b"".join(bufs)))


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


class LogPosition(NamedTuple):
    """A byte position in the log: segment index and offset in that segment file."""

    segment: int
    offset: int


@dataclasses.dataclass
class SkippedRange:
    """Bytes ``[start, end)`` of segment file ``path`` that were not returned, and why."""

    path: str
    start: int
    end: int
    reason: str


@dataclasses.dataclass
class RecoveryReport:
    """What a read found besides the records.

    ``torn_tail``: the dropped incomplete tail (``torn_tail`` mode); ``stopped_at``: where a
    ``point_in_time`` read stopped; ``skipped``: regions ``skip_corrupt`` jumped over (also
    missing segments, with ``start == end == 0``); ``end``: position just after the last
    valid committed record read (where a writer continues); ``kind_counts``: committed
    records seen per kind (int kind -> count), including ones filtered out by epoch.
    """

    mode: str
    segments: list[str] = dataclasses.field(default_factory=list)
    skipped: list[SkippedRange] = dataclasses.field(default_factory=list)
    torn_tail: SkippedRange | None = None
    stopped_at: SkippedRange | None = None
    end: LogPosition | None = None
    last_epoch: int | None = None
    kind_counts: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.skipped and self.torn_tail is None and self.stopped_at is None


@dataclasses.dataclass
class ReadResult:
    """Records (in log order) plus the :class:`RecoveryReport`; iterates over the records."""

    records: list[LogRecord]
    report: RecoveryReport

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def _mode(mode: str) -> str:
    try:
        return _MODE_ALIASES[mode]
    except (KeyError, TypeError):
        raise InvalidArgumentError(f"mode={mode!r}; expected one of {MODES}") from None


def _check(buf: bytes, mv: memoryview, off: int, size: int) -> tuple:
    """Validate the record at ``off`` (header + CRC); BadRecord(reason) if it is not intact."""
    left = size - off
    if left < HEADER_SIZE:
        raise BadRecord(f"truncated record header ({left} of {HEADER_SIZE} bytes)")
    length, crc, epoch, ts, kind, flags, sl, res, bl = RECORD_HEADER.unpack_from(buf, off)
    if length < HEADER_SIZE or length & 7:
        raise BadRecord(f"invalid record length {length}")
    if length > left:
        raise BadRecord(f"record length {length} exceeds the {left} bytes left in the file")
    if kind not in KINDS:
        raise BadRecord(f"unknown record kind {kind}")
    if res or flags & ~FLAG_BATCH:
        raise BadRecord("reserved header bits are set")
    if HEADER_SIZE + sl + pad8(sl) + bl + pad8(bl) != length:
        raise BadRecord("record length does not match its source and body lengths")
    if crc32c(mv[off + 8 : off + length]) != crc:
        raise BadRecord("CRC mismatch")
    return length, epoch, ts, kind, flags, sl, bl


def _valid_at(buf, mv, off, size) -> bool:
    try:
        _check(buf, mv, off, size)
        return True
    except BadRecord:
        return False


def _next_valid(buf: bytes, mv: memoryview, start: int, size: int, hint: int | None = None) -> int | None:
    """Offset of the first intact record at an 8-aligned offset >= ``start`` (or None).

    Header plausibility is checked vectorised over every aligned offset; only survivors pay
    for a CRC. ``hint`` (e.g. bad offset + its claimed length) is tried first, so with a hint
    the answer is *an* intact record, not necessarily the first (use it for existence checks).
    """
    if hint is not None and start <= hint and not hint & 7 and _valid_at(buf, mv, hint, size):
        return hint
    a = start + pad8(start)
    chunk = 1 << 20
    while size - a >= HEADER_SIZE:
        n = min((size - a) // 8, chunk + 3)
        w = np.frombuffer(buf, "<u8", n, a)
        length = (w[:-3] & 0xFFFFFFFF).astype(np.int64)
        w3 = w[3:]
        kind = (w3 & 0xFF).astype(np.int64)
        flags = (w3 >> 8) & 0xFF
        sl = ((w3 >> 16) & 0xFF).astype(np.int64)
        res = (w3 >> 24) & 0xFF
        bl = (w3 >> 32).astype(np.int64)
        room = (size - a) - 8 * np.arange(n - 3, dtype=np.int64)
        ok = (
            (length == HEADER_SIZE + ((sl + 7) & -8) + ((bl + 7) & -8))
            & (kind >= 1)
            & (kind <= max(KINDS))
            & (res == 0)
            & ((flags & 0xFE) == 0)
            & (length <= room)
        )
        for i in np.flatnonzero(ok):
            off = a + 8 * int(i)
            if _valid_at(buf, mv, off, size):
                return off
        a += 8 * (n - 3)
    return None


def _check_segment_header(buf: bytes, index: int, path: str) -> int:
    """Validate a segment header; returns its first epoch. BadRecord if damaged."""
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise BadRecord(f"truncated segment header ({len(buf)} of {SEGMENT_HEADER_SIZE} bytes)")
    magic, version, hlen, _flags, sidx, first_epoch, _created, _res = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise BadRecord("bad segment magic")
    if crc32c(buf[:44]) != _U32.unpack_from(buf, 44)[0]:
        raise BadRecord("segment header CRC mismatch")
    if version != VERSION:
        raise SerializationError(f"{path}: TLog format version {version} is not supported (this build reads {VERSION})")
    if hlen != SEGMENT_HEADER_SIZE or sidx != index:
        raise BadRecord(f"segment header names index {sidx} / size {hlen}")
    return first_epoch


def _header_first_epoch(path: Path, index: int) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(SEGMENT_HEADER_SIZE)
        return _check_segment_header(head, index, str(path))
    except (BadRecord, OSError):
        return None


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
        self._sources: dict[bytes, str] = {}

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
    def segment(self, index: int, path: Path, buf: bytes, is_last: bool) -> None:
        spath = str(path)
        rep = self.report
        rep.segments.append(spath)
        size = len(buf)
        mv = memoryview(buf)
        try:
            _check_segment_header(buf, index, spath)
            off = SEGMENT_HEADER_SIZE
        except BadRecord as e:
            off = self._bad(spath, buf, mv, 0, 0, f"bad segment header: {e}", is_last, SEGMENT_HEADER_SIZE)
            if off is None:
                rep.end = LogPosition(index, 0)
                return
        good = off if off == SEGMENT_HEADER_SIZE else 0
        lo, hi, out, counts = self.lo, self.hi, self.records, rep.kind_counts
        decode, copy, include_commit = self.decode, self.copy, self.include_commit
        pending: list = []
        pkinds: list = []
        pstart = pepoch = -1
        hit_hi = False
        while off < size:
            try:
                length, epoch, ts, kind, flags, sl, bl = _check(buf, mv, off, size)
                if hi is not None and epoch > hi and not pkinds:
                    hit_hi = self.done = True
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
                        "offset": off,
                    }
                    rec = decode_body(kind, buf, p, p + bl, copy, common)
            except BadRecord as e:
                if hi is not None and not pkinds and size - off >= HEADER_SIZE:
                    # A damaged record whose epoch field reads past end_epoch, after intact
                    # records up to it: the reader was asked to stop before it.
                    (claimed_epoch,) = _Q.unpack_from(buf, off + 8)
                    if claimed_epoch > hi and (rep.last_epoch is None or claimed_epoch >= rep.last_epoch):
                        hit_hi = self.done = True
                        break
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
                if epoch >= lo:
                    out.extend(r for r in pending if r is not None)
                    if include_commit:
                        out.append(rec)
                for k in pkinds:
                    counts[k] = counts.get(k, 0) + 1
                counts[kind] = counts.get(kind, 0) + 1
                pending, pkinds = [], []
                good = off + length
                rep.last_epoch = epoch
            else:
                if pkinds and (not flags & FLAG_BATCH or pepoch != epoch):
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
                else:
                    if rec is not None:
                        out.append(rec)
                    counts[kind] = counts.get(kind, 0) + 1
                    good = off + length
                    rep.last_epoch = epoch
            off += length
        if pkinds and not hit_hi and not self.done:
            reason = f"batch of {len(pkinds)} records at epoch {pepoch} has no COMMIT"
            if is_last and self.mode == "torn_tail":
                rep.torn_tail = SkippedRange(spath, pstart, size, reason + " at the end of the log")
            else:
                self._logical(spath, pstart, off, size, reason)
        rep.end = LogPosition(index, good)

    # -- a directory ---------------------------------------------------------------------
    def run(self, directory) -> None:
        segs = list_segments(directory)
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

    Records past ``end_epoch`` are not validated (a damaged record whose epoch field reads past
    ``end_epoch`` ends the read like an intact one would). Arrays are read-only views into the segment
    bytes unless ``copy=True``. COMMIT records are returned only if ``include_commit``.
    A missing directory reads as an empty log.
    """
    r = _Reader(_mode(mode), start_epoch, end_epoch, include_commit, copy)
    r.run(directory)
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


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SegmentInfo:
    """One segment file. ``last_epoch``/``records`` come from a header walk (no CRC)."""

    index: int
    path: Path
    first_epoch: int | None
    last_epoch: int | None
    bytes: int
    records: int
    kind_counts: dict[int, int]
    complete: bool  # the header walk reached the end of the file exactly


def _walk_segment(index: int, path: Path) -> SegmentInfo:
    with open(path, "rb") as f:
        buf = f.read()
    size = len(buf)
    first = None
    try:
        first = _check_segment_header(buf, index, str(path))
    except BadRecord:
        return SegmentInfo(index, path, None, None, size, 0, {}, False)
    off, last, counts = SEGMENT_HEADER_SIZE, None, {}
    while size - off >= HEADER_SIZE:
        length, _crc, epoch, _ts, kind = RECORD_HEADER.unpack_from(buf, off)[:5]
        if length < HEADER_SIZE or length & 7 or length > size - off:
            break
        counts[kind] = counts.get(kind, 0) + 1
        last = epoch
        off += length
    return SegmentInfo(index, path, first, last, size, sum(counts.values()), counts, off == size)


class _Rotate:
    """Buffer marker: close the current segment file and create ``path``."""

    __slots__ = ("path",)

    def __init__(self, path: Path):
        self.path = path


_FSYNC_MODES = ("always", "batch", "never")
_LIVE: weakref.WeakSet[TLog] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - interpreter exit
    for log in list(_LIVE):
        try:
            log.close()
        except Exception:  # noqa: BLE001, S110 - best effort at interpreter exit
            pass


class _FlushSignal:
    """State the flusher thread waits on (guarded by the TLog's lock); never refers to the TLog,
    so the thread can wait without keeping it alive."""

    __slots__ = ("first_unsynced", "stop")

    def __init__(self):
        self.first_unsynced: float | None = None  # monotonic time of the oldest buffered append
        self.stop = False


def _flusher(ref, cond: threading.Condition, sig: _FlushSignal, interval: float) -> None:
    """Background thread of a ``fsync="batch"`` TLog (holds only a weakref to it).

    Syncs the buffer once its oldest record is ``interval`` s old when no append came along to
    do it inline, so an acknowledged append is durable within ~``interval`` even if the
    appends stop. (Size-triggered syncs run inline in the appending thread: handing them to
    this thread costs a GIL hand-off per flush and was measured slower.)
    """
    while True:
        with cond:
            while not sig.stop:
                # Poll every interval rather than being notified by each append: a notify per
                # append costs the appending thread a GIL hand-off (~10 us per update).
                wait = interval
                if sig.first_unsynced is not None:
                    wait = sig.first_unsynced + interval - time.monotonic()
                    if wait <= 0:
                        break
                cond.wait(min(wait, interval))
            if sig.stop:
                return
        log = ref()  # taken and dropped outside the lock: dropping the last ref runs __del__
        if log is None:
            return
        try:
            log._flush(True)
        except Exception:  # noqa: BLE001
            return  # recorded in log._failed; raised by the next append/flush
        finally:
            del log


class TLog:
    """Append-only writer of one log directory. Thread-safe; one writer per directory.

    Args:
      directory: the log directory (created if missing); holds ``log-%08d.mmsblog`` segments
        and a ``tlog.lock`` file (an exclusive flock while open).
      fsync: ``"always"`` (every append is written and fdatasynced before it returns;
        concurrent appenders share syncs), ``"batch"`` (group commit: appends are buffered and
        written + fsynced by :meth:`commit`/:meth:`flush`/:meth:`sync`/:meth:`close`, when the
        buffer reaches ``buffer_bytes``, by the next append once the oldest buffered record is
        ``sync_interval`` s old, and otherwise by a background thread at that time, so an
        acknowledged append is durable within ~``sync_interval``), or ``"never"`` (written to
        the OS when the buffer fills and on flush/close; never fsynced, except :meth:`sync`).
      segment_bytes: rotate to a new segment before a record would grow the current one past
        this size (a record larger than it gets a segment of its own; a batch never spans
        segments).
      source: default ``source`` tag of records.
      recovery: on an existing directory, ``"torn_tail"`` truncates a torn tail of the last
        segment (and raises :class:`CorruptLogError` if damaged bytes are followed by intact
        records); ``"point_in_time"`` truncates at the first damage anywhere and renames later
        segments to ``*.corrupt-<ns>``. See :attr:`recovery_report`.

    Epochs must be non-decreasing across appends (InvalidArgumentError otherwise): assign and
    log under the same lock. Records sharing an epoch without a batch are allowed.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        fsync: str = "batch",
        segment_bytes: int = 64 << 20,
        source: str = "user",
        sync_interval: float = 0.005,
        buffer_bytes: int = 1 << 20,
        recovery: str = "torn_tail",
        background_flush: bool = True,
    ):
        if fsync not in _FSYNC_MODES:
            raise InvalidArgumentError(f"fsync={fsync!r}; expected one of {_FSYNC_MODES}")
        if recovery not in ("torn_tail", "point_in_time"):
            raise InvalidArgumentError(f"recovery={recovery!r}; expected 'torn_tail' or 'point_in_time'")
        if int(segment_bytes) < 4096:
            raise InvalidArgumentError(f"segment_bytes={segment_bytes!r} must be >= 4096")
        source_bytes(source)
        self.directory = Path(directory)
        self.fsync = fsync
        self.segment_bytes = int(segment_bytes)
        self.source = source
        self.sync_interval = float(sync_interval)
        self.buffer_bytes = int(buffer_bytes)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._io_lock = threading.Lock()
        self._buf: list = []
        self._buf_bytes = 0
        self._seq = self._written_seq = self._durable_seq = 0
        self._fd: int | None = None
        self._dirty = False
        self._segments: list[int] = []  # live segment indexes, the active one last
        self._info: dict[int, SegmentInfo] = {}  # cache for closed segments
        self._active: int | None = None
        self._active_first: int | None = None
        self._active_size = 0
        self._active_counts: dict[int, int] = {}
        self._next_index = 0
        self._last_epoch: int | None = None
        self._fsyncs = 0
        self._appends = 0
        self._failed: BaseException | None = None
        self._sig = _FlushSignal()
        self._thread: threading.Thread | None = None
        self._lockfd: int | None = None
        self._closed = True  # until fully open (so __del__ of a failed __init__ does nothing)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lockfd = self._acquire_dir_lock()
        try:
            self.recovery_report = self._recover(recovery)
        except BaseException:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            os.close(self._lockfd)
            self._lockfd = None
            raise
        self._closed = False
        if fsync == "batch" and background_flush:
            self._thread = threading.Thread(
                target=_flusher, args=(weakref.ref(self), self._cond, self._sig, self.sync_interval),
                name=f"tlog-flush:{self.directory.name}", daemon=True,
            )
            self._thread.start()
        _LIVE.add(self)

    # -- open / recovery -------------------------------------------------------------------
    def _acquire_dir_lock(self) -> int:
        fd = os.open(self.directory / "tlog.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        except OSError as e:
            os.close(fd)
            raise SerializationError(f"another TLog already has {self.directory} open for writing") from e
        return fd

    def _recover(self, recovery: str) -> RecoveryReport:
        segs = list_segments(self.directory)
        if recovery == "torn_tail":
            r = _Reader("torn_tail", decode=False)
            if segs:
                index, path = segs[-1]
                with open(path, "rb") as f:
                    buf = f.read()
                r.segment(index, path, buf, True)
        else:
            r = _Reader("point_in_time", decode=False)
            r.run(self.directory)
            if r.report.stopped_at is not None and r.report.end is not None:
                stamp = time.time_ns()
                for index, path in segs:
                    if index > r.report.end.segment:
                        os.replace(path, path.with_name(f"{path.name}.corrupt-{stamp}"))
                segs = [(i, p) for i, p in segs if i <= r.report.end.segment]
        rep = r.report
        if not segs:
            return rep
        index, path = segs[-1]
        end = rep.end.offset if rep.end is not None and rep.end.segment == index else 0
        self._segments = [i for i, _ in segs]
        if end <= SEGMENT_HEADER_SIZE:  # nothing committed in the last segment: remove it
            os.unlink(path)
            _fsync_dir(self.directory)
            self._segments.pop()
            self._next_index = index
            if self._segments:
                info = self._segment_info(self._segments[-1])
                self._last_epoch = info.last_epoch
            return rep
        with open(path, "rb") as f:
            head = f.read(SEGMENT_HEADER_SIZE)
        self._active_first = _check_segment_header(head, index, str(path))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            if os.fstat(fd).st_size != end:
                os.ftruncate(fd, end)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._active = index
        self._next_index = index + 1
        self._active_size = end
        # torn_tail scanned exactly this segment; point_in_time counted every segment
        self._active_counts = dict(rep.kind_counts) if recovery == "torn_tail" else _walk_segment(index, path).kind_counts
        self._last_epoch = rep.last_epoch
        return rep

    # -- properties ------------------------------------------------------------------------
    @property
    def last_epoch(self) -> int | None:
        """Epoch of the last appended (or, after reopening, last recovered) record."""
        return self._last_epoch

    @property
    def position(self) -> LogPosition:
        """End of the log (including buffered appends): where the next record will start,
        unless it rotates. Call :meth:`sync` first if you record it as durable."""
        with self._lock:
            if self._active is None:
                return LogPosition(self._next_index, 0)
            return LogPosition(self._active, self._active_size)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- appending -------------------------------------------------------------------------
    def _push(self, epoch: int, recs: list, nbytes: int, kinds: list) -> None:
        with self._lock:
            if self._closed:
                raise StateClosedError(f"TLog {self.directory} is closed")
            if self._failed is not None:
                raise SerializationError(f"TLog {self.directory} failed earlier: {self._failed}") from self._failed
            last = self._last_epoch
            if last is not None and epoch < last:
                raise InvalidArgumentError(f"epoch {epoch} is older than the last logged epoch {last}")
            buf = self._buf
            was_empty = not buf
            if self._active is None or (
                self._active_size + nbytes > self.segment_bytes and self._active_size > SEGMENT_HEADER_SIZE
            ):
                self._start_segment(epoch)
            buf.extend(recs)
            self._buf_bytes += nbytes
            self._active_size += nbytes
            self._seq += 1
            seq = self._seq
            self._last_epoch = epoch
            counts = self._active_counts
            for k in kinds:
                counts[k] = counts.get(k, 0) + 1
            self._appends += len(recs)
            mode = self.fsync
            if mode == "always" or self._buf_bytes >= self.buffer_bytes:
                need = True
            elif mode == "batch":
                # group commit: sync inline once the oldest buffered record is sync_interval
                # old; if no append comes by then, the flusher thread does it
                now = time.monotonic()
                sig = self._sig
                if was_empty or sig.first_unsynced is None:
                    sig.first_unsynced = now  # the flusher polls every interval: no wake-up call
                    need = False
                else:
                    # With the flusher thread, time-triggered syncs are its job: an appending
                    # caller never waits for an fsync it did not ask for (latency). Without it,
                    # the append that finds the interval passed syncs inline.
                    need = self._thread is None and now - sig.first_unsynced >= self.sync_interval
            else:
                need = False
        if need:
            self._flush(mode != "never", seq)

    def _start_segment(self, epoch: int) -> None:  # holds _lock
        if self._active is not None:
            self._info[self._active] = SegmentInfo(
                self._active, segment_path(self.directory, self._active), self._active_first,
                self._last_epoch, self._active_size, sum(self._active_counts.values()),
                dict(self._active_counts), True,
            )
        index = self._next_index
        path = segment_path(self.directory, index)
        hdr = segment_header(index, epoch, time.time_ns())
        self._buf.append(_Rotate(path))
        self._buf.append(hdr)
        self._buf_bytes += len(hdr)
        self._segments.append(index)
        self._active, self._next_index = index, index + 1
        self._active_first, self._active_size, self._active_counts = epoch, len(hdr), {}

    def _emit(self, epoch, kind, parts, source) -> None:
        if type(epoch) is not int or not 0 <= epoch <= U64_MAX:
            epoch = _epoch(epoch)
        rec = frame(epoch, kind, 0, time.time_ns(), self.source if source is None else source, parts)
        self._push(epoch, [rec], len(rec), [kind])

    def log_create_pages(self, epoch, first_page_id, count, shape, dtype, location="cpu", *, source=None):
        """CREATE_PAGES: pages ``first_page_id .. first_page_id+count-1`` of ``shape``/``dtype``."""
        self._emit(epoch, *body_create_pages(first_page_id, count, shape, dtype, location), source)

    def log_delete_pages(self, epoch, page_ids, *, source=None):
        """DELETE_PAGES: ``page_ids`` (int array-like)."""
        self._emit(epoch, *body_delete_pages(page_ids), source)

    def log_dense(self, epoch, page_id, mask, values, *, source=None):
        """DENSE: bool ``mask`` (page shape) and ``values``: either one per true mask entry
        (C order) or a full page array (the masked positions are taken)."""
        self._emit(epoch, *body_dense(page_id, mask, values), source)

    def log_dense_packed(self, epoch, page_id, shape, packed, values, *, source=None):
        """DENSE from a packed mask (``np.packbits`` of the flat mask): the unchecked fast path."""
        self._emit(epoch, *body_dense_packed(page_id, shape, packed, values), source)

    def log_sparse(self, epoch, page_id, indices, values, *, source=None):
        """SPARSE: flat ``indices`` (int32 range) and equally many ``values``."""
        self._emit(epoch, *body_sparse(page_id, indices, values), source)

    def log_sparse_batch(self, epoch, page_ids, indices, values, *, source=None):
        """SPARSE_BATCH: ``page_ids`` (n,), ``indices`` (n, k), ``values`` (n, k) — n sparse deltas."""
        self._emit(epoch, *body_sparse_batch(page_ids, indices, values), source)

    def log_accumulate(self, epoch, page_id, semiring, payload, *, source=None):
        """ACCUMULATE: ``page ⊕= payload`` under the semiring named ``semiring``."""
        self._emit(epoch, *body_accumulate(page_id, semiring, payload), source)

    def log_add_dep(self, epoch, parent, child, weight=None, edge_type="", *, source=None):
        """ADD_DEP: edge ``parent -> child``; ``weight=None`` is the semiring's one."""
        self._emit(epoch, *body_add_dep(parent, child, weight, edge_type), source)

    def log_remove_dep(self, epoch, parent, child, *, source=None):
        """REMOVE_DEP: edge ``parent -> child``."""
        self._emit(epoch, *body_remove_dep(parent, child), source)

    def append_record(self, record: LogRecord) -> None:
        """Append a (decoded or hand-made) record as a single record; keeps its epoch, and
        its timestamp/source when set. COMMIT records cannot be appended this way."""
        if isinstance(record, Commit) or not isinstance(record, LogRecord):
            raise InvalidArgumentError(f"cannot append {type(record).__name__}; use batch() for multi-record batches")
        epoch = _epoch(record.epoch)
        kind, parts = record._body()
        rec = frame(epoch, kind, 0, record.timestamp or time.time_ns(), record.source or self.source, parts)
        self._push(epoch, [rec], len(rec), [kind])

    def batch(self, epoch: int, *, source: str | None = None) -> TLogBatch:
        """A multi-record batch sharing ``epoch``, written atomically on exit (or ``commit()``)::

            with log.batch(epoch) as b:
                b.log_sparse(page, idx, vals)
                b.log_add_dep(page, other)

        An exception inside the ``with`` discards the batch (nothing is written).
        """
        return TLogBatch(self, _epoch(epoch), self.source if source is None else source)

    # -- flushing --------------------------------------------------------------------------
    def _flush(self, fsync: bool, seq: int | None = None) -> None:
        with self._io_lock:
            self._flush_io(fsync, seq)

    def _flush_io(self, fsync: bool, seq: int | None = None) -> None:  # holds _io_lock
        if seq is not None and (self._durable_seq if fsync else self._written_seq) >= seq:
            return  # someone else's group commit already covered it
        with self._lock:
            items, self._buf, self._buf_bytes = self._buf, [], 0
            self._sig.first_unsynced = None
            upto = self._seq
            if self._failed is not None:
                raise SerializationError(f"TLog {self.directory} failed earlier: {self._failed}") from self._failed
        try:
            chunk: list = []
            for it in items:
                if type(it) is _Rotate:
                    if chunk:
                        self._write(chunk)
                        chunk = []
                    self._rotate_io(it.path)
                else:
                    chunk.append(it)
            if chunk:
                self._write(chunk)
            if fsync and self._dirty:
                _datasync(self._fd)
                self._fsyncs += 1
                self._dirty = False
        except OSError as e:
            with self._lock:
                self._failed = e
            raise SerializationError(f"TLog write to {self.directory} failed: {e}") from e
        with self._lock:
            self._written_seq = upto
            if fsync:
                self._durable_seq = upto

    def _write(self, chunks: list) -> None:
        fd = self._fd
        for i in range(0, len(chunks), 1024):
            group = chunks[i : i + 1024]
            total = sum(len(c) for c in group)
            n = _writev(fd, group) if len(group) > 1 else os.write(fd, group[0])
            if n < total:  # short write: finish byte by byte-range
                rest = memoryview(b"".join(group))[n:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        self._dirty = True

    def _rotate_io(self, path: Path) -> None:
        if self._fd is not None:
            if self._dirty and self.fsync != "never":
                _datasync(self._fd)
                self._fsyncs += 1
            os.close(self._fd)
            self._fd = None
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._dirty = True
        if self.fsync != "never":
            _fsync_dir(self.directory)

    def flush(self) -> None:
        """Write buffered records to the OS, and fsync them unless ``fsync="never"``."""
        self._flush(self.fsync != "never")

    def commit(self) -> None:
        """Group-commit point: same as :meth:`flush`."""
        self._flush(self.fsync != "never")

    def sync(self) -> None:
        """Write and fsync everything appended so far, whatever the fsync policy."""
        self._flush(True)

    def close(self) -> None:
        """Flush (fsync unless ``"never"``), stop the flusher thread, release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sig.stop = True
            self._cond.notify_all()
        try:
            if self._failed is None:
                self._flush(self.fsync != "never")
        finally:
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
            with self._io_lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                if self._lockfd is not None:
                    os.close(self._lockfd)
                    self._lockfd = None
            _LIVE.discard(self)

    def __del__(self) -> None:  # a TLog dropped without close(): flush and release the directory
        try:
            if not self._closed:
                self.close()
        except Exception:  # noqa: BLE001, S110 - never raise from __del__
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TLog({str(self.directory)!r}, fsync={self.fsync!r}, last_epoch={self._last_epoch}, closed={self._closed})"

    # -- reading ---------------------------------------------------------------------------
    def read(self, mode="torn_tail", start_epoch=None, end_epoch=None, *, include_commit=False, copy=False) -> ReadResult:
        """:func:`read_records` on this log, after pushing buffered appends to the OS."""
        with self._io_lock:
            if not self._closed:
                self._flush_io(False)
            return read_records(self.directory, mode, start_epoch, end_epoch, include_commit=include_commit, copy=copy)

    def query(self, page_id=None, epochs=None, source=None, kinds=None) -> list[LogRecord]:
        """:func:`query_records` on this log (includes buffered appends)."""
        a, b = _epoch_range(epochs)
        res = self.read("torn_tail", a, b, include_commit=kinds is not None)
        return _filter(res.records, page_id, epochs, source, kinds)

    def _segment_info(self, index: int) -> SegmentInfo:  # closed segments only
        info = self._info.get(index)
        if info is None:
            info = self._info[index] = _walk_segment(index, segment_path(self.directory, index))
        return info

    def segments(self) -> list[SegmentInfo]:
        """Info on every live segment, oldest first (the active one last)."""
        with self._io_lock:
            out = [self._segment_info(i) for i in self._segments if i != self._active]
            with self._lock:
                if self._active is not None:
                    out.append(
                        SegmentInfo(
                            self._active, segment_path(self.directory, self._active), self._active_first,
                            self._last_epoch, self._active_size, sum(self._active_counts.values()),
                            dict(self._active_counts), True,
                        )
                    )
            return out

    def stats(self) -> dict[str, Any]:
        """Counts over the whole log (older segments by a cached header walk) plus this
        writer's counters."""
        segs = self.segments()
        by_kind: dict[str, int] = {}
        for s in segs:
            for k, n in s.kind_counts.items():
                name = Kind(k).name if k in KINDS else str(k)
                by_kind[name] = by_kind.get(name, 0) + n
        with self._lock:
            return {
                "directory": str(self.directory),
                "fsync": self.fsync,
                "segments": len(segs),
                "bytes": sum(s.bytes for s in segs),
                "buffered_bytes": self._buf_bytes,
                "records": sum(by_kind.values()),
                "records_by_kind": by_kind,
                "first_epoch": segs[0].first_epoch if segs else None,
                "last_epoch": self._last_epoch,
                "fsyncs": self._fsyncs,
                "appends": self._appends,
                "segment_bytes": self.segment_bytes,
            }

    # -- compaction ------------------------------------------------------------------------
    def drop_segments_through(self, epoch: int) -> list[Path]:
        """Delete the oldest whole segments whose records all have epoch <= ``epoch``.

        For the shell after it folded those epochs into a checkpoint. Never deletes the active
        segment; deletes a prefix only (the log stays contiguous). Returns deleted paths.
        """
        epoch = _epoch(epoch)
        deleted = []
        with self._io_lock:
            closed = [i for i in self._segments if i != self._active]
            for n, index in enumerate(closed):
                info = self._segment_info(index)
                nxt = self._segments[n + 1] if n + 1 < len(self._segments) else None
                if nxt is None:
                    nxt_first = None
                elif nxt == self._active:
                    nxt_first = self._active_first
                else:
                    nxt_first = self._segment_info(nxt).first_epoch
                safe = (info.complete and (info.last_epoch is None or info.last_epoch <= epoch)) or (
                    nxt_first is not None and nxt_first <= epoch
                )
                if not safe:
                    break
                info.path.unlink()
                deleted.append(info.path)
            if deleted:
                _fsync_dir(self.directory)
                with self._lock:
                    self._segments = self._segments[len(deleted) :]
                    for p in deleted:
                        self._info.pop(int(SEGMENT_RE.match(p.name).group(1)), None)
        return deleted


def _epoch(epoch: Any) -> int:
    try:
        e = int(epoch)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"epoch={epoch!r} is not an integer") from None
    if e != epoch or not 0 <= e <= U64_MAX:
        raise InvalidArgumentError(f"epoch={epoch!r} is not an integer in [0, 2**64)")
    return e


class TLogBatch:
    """Records of one epoch, written atomically (flagged BATCH, closed by a COMMIT record).

    Same ``log_*`` methods as :class:`TLog`, without the ``epoch`` argument. Arrays are
    encoded (copied) at call time. ``commit()`` (or leaving the ``with`` normally) writes;
    ``abort()`` (or an exception in the ``with``) discards. An empty batch writes nothing.
    """

    def __init__(self, log: TLog, epoch: int, source: str):
        self._log = log
        self.epoch = epoch
        self.source = source
        self._recs: list = []
        self._kinds: list = []
        self._nbytes = 0
        self._done = False

    def _add(self, kind, parts, source) -> None:
        if self._done:
            raise InvalidArgumentError("this batch was already committed or aborted")
        rec = frame(self.epoch, kind, FLAG_BATCH, time.time_ns(), self.source if source is None else source, parts)
        self._recs.append(rec)
        self._kinds.append(kind)
        self._nbytes += len(rec)

    def log_create_pages(self, first_page_id, count, shape, dtype, location="cpu", *, source=None):
        self._add(*body_create_pages(first_page_id, count, shape, dtype, location), source)

    def log_delete_pages(self, page_ids, *, source=None):
        self._add(*body_delete_pages(page_ids), source)

    def log_dense(self, page_id, mask, values, *, source=None):
        self._add(*body_dense(page_id, mask, values), source)

    def log_dense_packed(self, page_id, shape, packed, values, *, source=None):
        self._add(*body_dense_packed(page_id, shape, packed, values), source)

    def log_sparse(self, page_id, indices, values, *, source=None):
        self._add(*body_sparse(page_id, indices, values), source)

    def log_sparse_batch(self, page_ids, indices, values, *, source=None):
        self._add(*body_sparse_batch(page_ids, indices, values), source)

    def log_accumulate(self, page_id, semiring, payload, *, source=None):
        self._add(*body_accumulate(page_id, semiring, payload), source)

    def log_add_dep(self, parent, child, weight=None, edge_type="", *, source=None):
        self._add(*body_add_dep(parent, child, weight, edge_type), source)

    def log_remove_dep(self, parent, child, *, source=None):
        self._add(*body_remove_dep(parent, child), source)

    def append_record(self, record: LogRecord) -> None:
        if isinstance(record, Commit) or not isinstance(record, LogRecord):
            raise InvalidArgumentError(f"cannot append {type(record).__name__} to a batch")
        self._add(*record._body(), record.source or None)

    def __len__(self) -> int:
        return len(self._recs)

    def commit(self) -> None:
        if self._done:
            raise InvalidArgumentError("this batch was already committed or aborted")
        self._done = True
        if not self._recs:
            return
        kind, parts = body_commit(len(self._recs))
        end = frame(self.epoch, kind, FLAG_BATCH, time.time_ns(), self.source, parts)
        recs, self._recs = self._recs + [end], []
        self._log._push(self.epoch, recs, self._nbytes + len(end), self._kinds + [kind])

    def abort(self) -> None:
        self._done = True
        self._recs = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._done:
                self.commit()
        else:
            self.abort()
