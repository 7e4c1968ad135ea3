"""The shell's side of the log: each operation's records (into the open batch, if any), batches,
flush, and starting the writer. A mixin of :class:`~mmsb_jax.shell._state.MMSBState`."""

from __future__ import annotations

import os

import numpy as np

from ..deltas._delta import DenseDelta, SparseDelta
from ..log._directory import read_state_file, remove_incomplete_checkpoints, write_state_file
from ..pages import PagePool


class Logging:
    """Mixin of :class:`MMSBState`: the records of its operations, log batches, ``flush``."""

    def _log_record(self, method: str, *args) -> None:
        """Log one record of the current epoch (into the open batch, if any)."""
        if self._log is None:  # a read-only snapshot, or replay in progress
            return
        kw = {"source": self._source} if self._source is not None else {}
        if self._log_batch is not None:
            getattr(self._log_batch, method)(*args, **kw)
        else:
            getattr(self._log, method)(self._epoch, *args, **kw)

    def _log_create(self, first: int, n: int, pool: PagePool, fill=None) -> None:
        if self._log is not None:
            self._log_record("log_create_pages", first, n, pool.shape, pool.dtype, pool.location, fill)

    def _log_delete(self, pid: int) -> None:
        self._log_record("log_delete_pages", np.array([pid], np.uint64))

    def _log_delta(self, pid: int, delta) -> None:
        if self._log is None:
            return
        if isinstance(delta, DenseDelta):
            mask = np.asarray(delta.mask)
            self._log_record("log_dense", pid, mask, np.asarray(delta.payload)[mask])
        elif isinstance(delta, SparseDelta):
            self._log_record("log_sparse", pid, np.asarray(delta.indices), np.asarray(delta.values))
        else:
            self._log_record("log_accumulate", pid, delta.semiring.name, np.asarray(delta.payload))

    def _log_sparse_batch(self, pids, ind, vals) -> None:
        self._log_record("log_sparse_batch", pids, ind, vals)

    def _open_log_batch(self) -> None:
        """Open a multi-record batch for the current epoch (closed by :meth:`_commit_log_batch`)."""
        if self._log is not None:
            self._log_batch = self._log.batch(self._epoch)

    def _commit_log_batch(self) -> None:
        txn, self._log_batch = self._log_batch, None
        if txn is not None:
            txn.commit()

    def flush(self) -> None:
        """Make every operation so far durable now: tree-journal steps still queued for the
        background writer (``save_tree`` and tree-ring drains return before they are written
        under ``fsync="batch"``) are written, and the log is fsynced.

        Example:
          >>> import numpy as np, mmsb_jax as mmsb
          >>> state = mmsb.mmsb_start()
          >>> _ = mmsb.save_tree(state, "params", {"w": np.zeros(3, np.float32)}, step=0)
          >>> state.flush()      # the step is on disk: a crash of the process keeps it
          >>> mmsb.mmsb_stop(state)
        """
        self._check_open()
        self._flush_log()

    def _flush_log(self) -> None:
        """Make every record so far readable from the log's files (in every process)."""
        with self._lock:  # after the background tree writer's queued steps
            if self._log is not None:
                self._log.sync()
        if self._dist is not None and self._dist.usable:
            self._dist.barrier("flush the log")  # process 0 wrote it: now every process may read

    @property
    def _writes_files(self) -> bool:
        """Whether this process writes the state's files (process 0 of a distributed state)."""
        return self._dist is None or self._dist.is_writer

    def open_log(self, recovery: str = "torn_tail") -> None:
        """Start journaling into ``<path>/log`` (after any replay); in a distributed state,
        process 0 writes the log and the others follow (see ``shell/_distributed``)."""
        if self._dist is not None:
            try:
                self._dist.open_log(self, recovery)
            except BaseException:  # e.g. a directory per host: process 0 lets go of its log
                if self._log is not None:
                    self._log.close()
                    self._log = None
                raise
        else:
            self._open_writer_log(recovery)

    def _open_writer_log(self, recovery: str) -> None:
        from ..log import TLog

        self._log = TLog(os.path.join(self.path, "log"), fsync=self.fsync, recovery=recovery,
                         segment_bytes=self.segment_bytes)
        self._log.on_fsync = self._telemetry.observe_fsync
        if self._telemetry.tail_mark is None:  # a new state: a reopen replays the whole log
            self._mark_tail([])
        self._start_snapshots()
        # the writer holds the log's lock: no one else is writing a checkpoint here
        remove_incomplete_checkpoints(self.path)
        if read_state_file(self.path) is None:
            write_state_file(self.path, self.semiring.name)
