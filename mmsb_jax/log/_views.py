"""What a writer can say of its log: reads through it, its segments, and its counters."""

from __future__ import annotations

from typing import Any

from ._records import LogRecord
from ._encode import KINDS, Kind
from ._reader import _epoch_range, _filter, read_records, segment_path
from ._report import ReadResult
from ._segments import SegmentInfo, walk_segment


class LogViews:
    """Mixin of :class:`~mmsb_jax.log.TLog`: reading, segment info and stats."""

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
