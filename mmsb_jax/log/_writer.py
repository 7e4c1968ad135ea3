"""Durable transaction log (TLog): append-only, CRC-framed, segmented; RocksDB-like recovery.

Writer: :class:`TLog` (one per directory, thread-safe, ``fsync="always" | "batch" | "never"``).
Reader: :func:`read_records` (modes ``"torn_tail"`` (default), ``"absolute"``,
``"point_in_time"``, ``"skip_corrupt"``) and :func:`query_records`. Record types live in
:mod:`mmsb_jax.log._encode`; the byte format is specified in ``docs/tlog-format.md``.

The writer's parts are mixins, one concept each: typed appends (:mod:`._appends`), I/O and
syncing (:mod:`._io`), reads and stats (:mod:`._views`), compaction (:mod:`._compaction`);
this module holds opening, recovery and the append buffer.

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
from typing import Self

from .._checks import is_int
from .._errors import InvalidArgumentError, SerializationError, StateClosedError
from ._appends import RecordAppends
from ._batch import TLogBatch, check_epoch, install_log_methods
from ._compaction import Compaction
from ._encode import SEGMENT_HEADER, SEGMENT_HEADER_SIZE, Kind
from ._files import fsync_dir
from ._flusher import FlushSignal, flusher
from ._framing import segment_header, source_bytes
from ._io import SegmentIO
from ._reader import _Reader, list_segments, segment_path
from ._report import LogPosition, RecoveryReport, ResumePoint
from ._scan import _check_segment_header
from ._segments import Rotate, SegmentInfo, walk_segment
from ._views import LogViews

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


class TLog(RecordAppends, SegmentIO, LogViews, Compaction):
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


install_log_methods(TLog)
