"""The writer's I/O: buffered records to the OS (``writev``), segment rotation, fdatasync in
the caller's thread or the flusher's, outside the append lock."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .._errors import SerializationError
from ._files import fsync_dir
from ._segments import Rotate

_datasync = getattr(os, "fdatasync", os.fsync)
_writev = getattr(os, "writev", None) or (lambda fd, bufs: os.write(fd, b"".join(bufs)))


class SegmentIO:
    """Mixin of :class:`~mmsb_jax.log.TLog`: writing what is buffered, and syncing it."""

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
