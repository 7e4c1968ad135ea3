"""Durable transaction log (TLog): append-only, CRC-framed, segmented; RocksDB-like recovery.

Writer: :class:`TLog` (one per directory, thread-safe, ``fsync="always" | "batch" | "never"``).
Reader: :func:`read_records` (modes ``"torn_tail"`` (default), ``"absolute"``,
``"point_in_time"``, ``"skip_corrupt"``) and :func:`query_records`. Record types live in
:mod:`mmsb_jax.log._encode`; the byte format is specified in ``docs/tlog-format.md``.

Pure Python + numpy + ``crc32c``: no jax, never pickles, never trusts a length field beyond
the bytes actually present in the file.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Self

from ._decode import (
    Commit,
    LogRecord,
)
from .._checks import is_int
from .._errors import (
    InvalidArgumentError,
    SerializationError,
    StateClosedError,
)
from ._files import fsync_dir
from ._encode import (
    KINDS,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    U64_MAX,
    Kind,
    body_accumulate,
    body_add_dep,
    body_create_pages,
    body_delete_pages,
    body_dense,
    body_dense_packed,
    body_remove_dep,
    body_remove_deps,
    body_derive,
    body_add_deps,
    body_rows,
    body_sparse,
    body_sparse_batch,
    body_tree_def,
    body_tree_step,
    frame,
    frame_chunks,
    segment_header,
    source_bytes,
)
from ._batch import TLogBatch, check_epoch, install_log_methods
from ._flusher import FlushSignal, flusher
from ._segments import Rotate, SegmentInfo, walk_segment
from ._report import LogPosition, ReadResult, RecoveryReport, ResumePoint
from ._scan import _check_segment_header
from ._reader import (
    SEGMENT_RE,
    _epoch_range,
    _filter,
    _Reader,
    list_segments,
    read_records,
    segment_path,
)



_datasync = getattr(os, "fdatasync", os.fsync)
_writev = getattr(os, "writev", None) or (lambda fd, bufs: os.write(fd, b"".join(bufs)))


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


#: The durability policies (``fsync=`` of :class:`TLog` and of a state).
FSYNC_MODES = ("always", "batch", "never")
MIN_SEGMENT_BYTES = 4096
_LIVE: weakref.WeakSet[TLog] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - interpreter exit
    for log in list(_LIVE):
        try:
            log.close()
        except Exception:  # noqa: BLE001, S110 - best effort at interpreter exit
            pass


class TLog:
    """Append-only writer of one log directory. Thread-safe; one writer per directory.

    Args:
      directory: the log directory (created if missing); holds ``log-%08d.mmsblog`` segments
        and a ``tlog.lock`` file (an exclusive flock while open).
      fsync: ``"always"`` (every append is written and fdatasynced before it returns;
        concurrent appenders share syncs), ``"batch"`` (group commit: every append is written
        to the OS before it returns, so a crash of the process loses nothing acknowledged; a
        background thread fsyncs once the oldest unsynced record is ``sync_interval`` s old, as
        do :meth:`flush`/:meth:`sync`/:meth:`close`, so after a crash of the machine what is
        lost is at most the last ~``sync_interval`` plus the thread's scheduling delay), or
        ``"never"`` (buffered up to ``buffer_bytes``, written to the OS when the buffer fills
        and on flush/close; never fsynced, except :meth:`sync`).
      segment_bytes: rotate to a new segment before a record would grow the current one past
        this size (a record larger than it gets a segment of its own; a batch never spans
        segments).
      source: default ``source`` tag of records.
      recovery: on an existing directory, ``"torn_tail"`` truncates a torn tail of the last
        segment (and raises :class:`CorruptLogError` if damaged bytes are followed by intact
        records); ``"point_in_time"`` truncates at the first damage anywhere and renames later
        segments to ``*.corrupt-<ns>``. See :attr:`recovery_report`.

    Epochs must strictly increase from one append (a record, or a whole batch) to the next
    (InvalidArgumentError otherwise): assign and log under the same lock; records that share
    an epoch go in one :meth:`batch`. The reader refuses logs that break this rule.
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
        if fsync not in FSYNC_MODES:
            raise InvalidArgumentError(f"fsync={fsync!r}; expected one of {FSYNC_MODES}")
        if recovery not in ("torn_tail", "point_in_time"):
            raise InvalidArgumentError(f"recovery={recovery!r}; expected 'torn_tail' or 'point_in_time'")
        if not is_int(segment_bytes) or segment_bytes < MIN_SEGMENT_BYTES:
            raise InvalidArgumentError(f"segment_bytes={segment_bytes!r} must be an int >= {MIN_SEGMENT_BYTES}")
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
        self._active_created: int | None = None  # the active segment header's creation stamp
        self._last_rec: tuple[int, int] | None = None  # (length, header CRC) of the last record appended
        self._active_size = 0
        self._active_counts: dict[int, int] = {}
        self._next_index = 0
        self._last_epoch: int | None = None
        self._fsyncs = 0
        #: called with the seconds each fdatasync took (by whichever thread synced); None: untimed
        self.on_fsync = None
        self._appends = 0
        self._appended_bytes = 0
        self._failed: BaseException | None = None
        self._sig = FlushSignal()
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
                target=flusher, args=(weakref.ref(self), self._cond, self._sig, self.sync_interval),
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
            fsync_dir(self.directory)
            self._segments.pop()
            self._next_index = index
            if self._segments:
                info = self._segment_info(self._segments[-1])
                self._last_epoch = info.last_epoch
            return rep
        with open(path, "rb") as f:
            head = f.read(SEGMENT_HEADER_SIZE)
        self._active_first = _check_segment_header(head, index, str(path))
        self._active_created = SEGMENT_HEADER.unpack_from(head, 0)[6]
        if r.last_record is not None and r.last_record[0] == end:  # the record a resume point pins
            self._last_rec = r.last_record[1:]
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
        self._active_counts = dict(rep.kind_counts) if recovery == "torn_tail" else walk_segment(index, path).kind_counts
        self._last_epoch = rep.last_epoch
        return rep

    # -- properties ------------------------------------------------------------------------
    @property
    def last_epoch(self) -> int | None:
        """Epoch of the last appended (or, after reopening, last recovered) record."""
        return self._last_epoch

    def resume_point(self) -> ResumePoint | None:
        """Where the next record will start, pinned by the creation stamp of its segment's
        header and the record that ends there (``None`` before the first segment, or after a
        reopen whose recovery did not end on a whole record): a reader given it (``read_records(..., start_at=point)``)
        starts there, not at the segment's first record, while the segment is still the one
        that stamp names and that record still ends there. Call after a flush."""
        with self._lock:
            if self._active is None:
                return None
            if self._active_size == SEGMENT_HEADER_SIZE:
                return ResumePoint(self._active, self._active_size, self._active_created, 0, 0)
            if self._last_rec is None:
                return None
            return ResumePoint(self._active, self._active_size, self._active_created, *self._last_rec)

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
        self._push_groups(((epoch, recs, nbytes, kinds),))

    def _push_groups(self, groups) -> None:
        """Append groups ``(epoch, records, nbytes, kinds)`` (each a record or a whole batch, never
        split across segments) in order, then flush once if the policy asks for it."""
        with self._lock:
            if self._closed:
                raise StateClosedError(f"TLog {self.directory} is closed")
            if self._failed is not None:
                raise SerializationError(f"TLog {self.directory} failed earlier: {self._failed}") from self._failed
            last = self._last_epoch
            for epoch, *_ in groups:
                if last is not None and epoch <= last:
                    raise InvalidArgumentError(
                        f"epoch {epoch} is not after the last logged epoch {last}: each record or batch "
                        "takes a new, larger epoch"
                    )
                last = epoch
            buf = self._buf
            counts = self._active_counts
            for epoch, recs, nbytes, kinds in groups:
                if self._active is None or (
                    self._active_size + nbytes > self.segment_bytes and self._active_size > SEGMENT_HEADER_SIZE
                ):
                    self._start_segment(epoch)
                    counts = self._active_counts
                buf.extend(recs)
                # the group's last record: a batch's COMMIT, else the group is one record
                end_rec = recs[-1] if kinds[-1] == Kind.COMMIT else recs[0]
                self._last_rec = (len(end_rec) if kinds[-1] == Kind.COMMIT else nbytes,
                                  int.from_bytes(bytes(end_rec[4:8]), "little"))
                self._buf_bytes += nbytes
                self._active_size += nbytes
                self._appends += len(kinds)
                self._appended_bytes += nbytes
                for k in kinds:
                    counts[k] = counts.get(k, 0) + 1
            self._seq += 1
            seq = self._seq
            self._last_epoch = last
            mode = self.fsync
            if mode == "always":
                need = sync = True
            elif mode == "batch":
                # Group commit: every append is written to the OS before it returns (a crash of
                # the process loses nothing acknowledged); the fsync comes once the oldest
                # unsynced record is sync_interval old, from the flusher thread, which polls
                # (no wake-up call per append). Without that thread, the append that finds
                # the interval passed syncs inline.
                sig = self._sig
                if sig.first_unsynced is None:
                    sig.first_unsynced = time.monotonic()
                    sync = False
                else:
                    sync = self._thread is None and time.monotonic() - sig.first_unsynced >= self.sync_interval
                need = True
            else:
                need, sync = self._buf_bytes >= self.buffer_bytes, False
        if need:
            self._flush(sync, seq)

    def _active_info(self) -> SegmentInfo:  # holds _lock
        return SegmentInfo(
            self._active, segment_path(self.directory, self._active), self._active_first,
            self._last_epoch, self._active_size, sum(self._active_counts.values()),
            dict(self._active_counts), True,
        )

    def _start_segment(self, epoch: int) -> None:  # holds _lock
        if self._active is not None:
            self._info[self._active] = self._active_info()
        index = self._next_index
        path = segment_path(self.directory, index)
        created = time.time_ns()
        hdr = segment_header(index, epoch, created)
        self._buf.append(Rotate(path))
        self._buf.append(hdr)
        self._buf_bytes += len(hdr)
        self._segments.append(index)
        self._active, self._next_index = index, index + 1
        self._active_first, self._active_size, self._active_counts = epoch, len(hdr), {}
        self._active_created = created

    def _emit(self, epoch, kind, parts, source) -> None:
        if type(epoch) is not int or not 0 <= epoch <= U64_MAX:
            epoch = check_epoch(epoch)
        src = self.source if source is None else source
        if self.fsync == "never":  # buffered past this call: copy the parts into one record
            rec = frame(epoch, kind, 0, time.time_ns(), src, parts)
            self._push(epoch, [rec], len(rec), [kind])
        else:  # written to the OS before this returns: a large record's arrays are not copied
            chunks, nbytes = frame_chunks(epoch, kind, 0, time.time_ns(), src, parts)
            self._push(epoch, chunks, nbytes, [kind])

    def log_create_pages(self, epoch, first_page_id, count, shape, dtype, location="cpu", fill=None, *, source=None):
        """CREATE_PAGES: pages ``first_page_id .. first_page_id+count-1`` of ``shape``/``dtype``,
        every element ``fill`` (``None``: zero)."""
        self._emit(epoch, *body_create_pages(first_page_id, count, shape, dtype, location, fill), source)

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

    def log_add_deps(self, epoch, parents, children, weights=None, edge_type="", *, source=None):
        """ADD_DEPS: edges ``parents[i] -> children[i]``; a NaN weight is the semiring's one."""
        self._emit(epoch, *body_add_deps(parents, children, weights, edge_type), source)

    def log_remove_deps(self, epoch, parents, children, *, source=None):
        """REMOVE_DEPS: edges ``parents[i] -> children[i]``."""
        self._emit(epoch, *body_remove_deps(parents, children), source)

    def log_derive(self, epoch, child, name, parents, *, source=None):
        """DERIVE: page ``child`` is the function registered as ``name`` of ``parents``."""
        self._emit(epoch, *body_derive(child, name, parents), source)

    def log_rows(self, epoch, page_id, row_len, rows, values, *, source=None):
        """ROWS: rows ``rows`` (int32, (r,)) of ``row_len`` elements of the flat page become
        ``values`` (r * row_len,); ``rows=[0]``, ``row_len`` = page size: a whole-page write."""
        self._emit(epoch, *body_rows(page_id, row_len, rows, values), source)

    def log_tree_def(self, epoch, name, structure, page_ids, *, source=None):
        """TREE_DEF: tree ``name`` with ``structure`` (canonical JSON) and its leaf ``page_ids``."""
        self._emit(epoch, *body_tree_def(name, structure, page_ids), source)

    def log_tree_step(self, epoch, name, step, *, source=None):
        """TREE_STEP: tag ``epoch`` as step ``step`` (int64) of tree ``name``."""
        self._emit(epoch, *body_tree_step(name, step), source)

    def append_record(self, record: LogRecord) -> None:
        """Append a (decoded or hand-made) record as a single record; keeps its epoch, and
        its timestamp/source when set. COMMIT records cannot be appended this way."""
        if isinstance(record, Commit) or not isinstance(record, LogRecord):
            raise InvalidArgumentError(f"cannot append {type(record).__name__}; use batch() for multi-record batches")
        epoch = check_epoch(record.epoch)
        kind, parts = record._body()
        rec = frame(epoch, kind, 0, record.timestamp or time.time_ns(), record.source or self.source, parts)
        self._push(epoch, [rec], len(rec), [kind])

    def batch(self, epoch: int, *, source: str | None = None, zero_copy: bool = False) -> TLogBatch:
        """A multi-record batch sharing ``epoch``, written atomically on exit (or ``commit()``)::

            with log.batch(epoch) as b:
                b.log_sparse(page, idx, vals)
                b.log_add_dep(page, other)

        An exception inside the ``with`` discards the batch (nothing is written).

        ``zero_copy=True``: large records keep referring to the arrays they were given instead
        of copying them (the caller must not change those arrays until they are written: use
        :meth:`commit_batches`, which writes them out before returning).
        """
        return TLogBatch(self, check_epoch(epoch), self.source if source is None else source, zero_copy)

    def commit_batches(self, batches) -> None:
        """Commit several batches (epochs increasing) in one append: one flush, so one fsync
        under ``"always"`` / ``"batch"`` for all of them. Each stays atomic on its own (records
        + COMMIT, never split across segments); empty batches write nothing. Batches made with
        ``zero_copy=True`` are written to the OS before this returns (synced as the policy says)."""
        groups = [g for g in (b._seal() for b in batches) if g is not None]
        if groups:
            self._push_groups(groups)
            if any(b._zero_copy for b in batches) and self._buf_bytes:  # ("never" buffers up to 1 MiB)
                self._flush(False)

    # -- flushing --------------------------------------------------------------------------
    def _flush(self, fsync: bool, seq: int | None = None) -> None:
        with self._io_lock:
            self._flush_io(fsync, seq)

    def _background_sync(self) -> None:
        """The flusher thread's sync: write what is buffered, then fdatasync a duplicate of the
        file descriptor *outside* the I/O lock, so an appender (which writes to the OS under
        that lock) never waits for the disk."""
        with self._lock:
            self._sig.first_unsynced = None  # appends from now on open the next window
        with self._io_lock:
            self._flush_io(False)
            if not self._dirty or self._fd is None:
                return
            upto = self._written_seq
            fd = os.dup(self._fd)  # stays valid if a rotation closes the segment meanwhile
            self._dirty = False  # a write during the sync sets it again
        try:
            _datasync(fd)
        except OSError as e:
            with self._lock:
                self._failed = e
            raise SerializationError(f"TLog sync of {self.directory} failed: {e}") from e
        finally:
            os.close(fd)
        with self._lock:
            self._fsyncs += 1
            self._durable_seq = max(self._durable_seq, upto)

    def _flush_io(self, fsync: bool, seq: int | None = None) -> None:  # holds _io_lock
        if seq is not None and (self._durable_seq if fsync else self._written_seq) >= seq:
            return  # someone else's group commit already covered it
        with self._lock:
            items, self._buf, self._buf_bytes = self._buf, [], 0
            if fsync:
                self._sig.first_unsynced = None
            upto = self._seq
            if self._failed is not None:
                raise SerializationError(f"TLog {self.directory} failed earlier: {self._failed}") from self._failed
        try:
            chunk: list = []
            for it in items:
                if type(it) is Rotate:
                    if chunk:
                        self._write(chunk)
                        chunk = []
                    self._rotate_io(it.path)
                else:
                    chunk.append(it)
            if chunk:
                self._write(chunk)
            if fsync and self._dirty:
                self._datasync()
                self._dirty = False
        except OSError as e:
            with self._lock:
                self._failed = e
            raise SerializationError(f"TLog write to {self.directory} failed: {e}") from e
        with self._lock:
            self._written_seq = upto
            if fsync:
                self._durable_seq = upto

    def _datasync(self) -> None:  # holds _io_lock
        """fdatasync the active segment; its duration goes to ``on_fsync`` (the state's telemetry)."""
        t0 = time.perf_counter()
        _datasync(self._fd)
        self._fsyncs += 1
        if self.on_fsync is not None:
            self.on_fsync(time.perf_counter() - t0)

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
                self._datasync()
            os.close(self._fd)
            self._fd = None
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._dirty = True
        if self.fsync != "never":
            fsync_dir(self.directory)

    def flush(self) -> None:
        """Write buffered records to the OS, and fsync them unless ``fsync="never"``."""
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
            info = self._info[index] = walk_segment(index, segment_path(self.directory, index))
        return info

    def segments(self) -> list[SegmentInfo]:
        """Info on every live segment, oldest first (the active one last)."""
        with self._io_lock:
            out = [self._segment_info(i) for i in self._segments if i != self._active]
            with self._lock:
                if self._active is not None:
                    out.append(self._active_info())
            return out

    def appended(self) -> tuple[int, int]:
        """``(records, bytes)`` appended by this writer since it was opened."""
        return self._appends, self._appended_bytes

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
    def seal(self) -> None:
        """Write and fsync everything appended so far and close the active segment: the next
        append starts a new one. Compaction seals first, so that every committed record lies
        in a closed segment it may drop."""
        with self._io_lock:
            self._flush_io(True)
            with self._lock:
                if self._closed:
                    raise StateClosedError(f"TLog {self.directory} is closed")
                if self._active is None:
                    return
                self._info[self._active] = self._active_info()
                self._active = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def drop_segments_through(self, epoch: int) -> list[Path]:
        """Delete the oldest whole segments whose records all have epoch <= ``epoch``.

        For the shell after it folded those epochs into a checkpoint. Never deletes the active
        segment; deletes a prefix only (the log stays contiguous). Returns deleted paths.
        """
        epoch = check_epoch(epoch)
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
                fsync_dir(self.directory)
                with self._lock:
                    self._segments = self._segments[len(deleted) :]
                    for p in deleted:
                        self._info.pop(int(SEGMENT_RE.match(p.name).group(1)), None)
        return deleted


install_log_methods(TLog)
