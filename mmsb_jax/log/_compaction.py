"""Compaction on the writer's side: sealing the active segment and dropping a prefix of
closed segments that a checkpoint covers."""

from __future__ import annotations

import os
from pathlib import Path

from .._errors import StateClosedError
from ._batch import check_epoch
from ._files import fsync_dir
from ._reader import SEGMENT_RE


class Compaction:
    """Mixin of :class:`~mmsb_jax.log.TLog`: ``seal`` and ``drop_segments_through``."""

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
