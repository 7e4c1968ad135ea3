"""Telemetry of :class:`MMSBState`: the sections ``get_stats`` adds, the replay tail, the
snapshot file, the propagation policy switch (the figures themselves: ``mmsb_jax/telemetry``)."""

from __future__ import annotations

import os
import time

import numpy as np

from .._errors import InvalidArgumentError
from ..log._report import LogPosition
from ..telemetry import cost_model
from ..telemetry._counters import STATE_COUNTERS
from ..telemetry._disk import checkpoint_figures
from ..telemetry._snapshot import snapshot_every_second, write_snapshot
from ..telemetry._strategy import check_mode
from ..telemetry._tail import first_position, segment_sizes, tail_bytes


class Telemetered:
    """Mixin of :class:`MMSBState`: telemetry beyond the counters (``state._telemetry``)."""

    # ------------------------------------------------------------------ the policy switch
    @property
    def propagation_policy(self) -> str:
        """How a write's propagation pass is chosen: ``"cost"`` (the cost model picks
        incremental or full where both are exact; the default) or ``"fixed"`` (the policy off:
        incremental whenever exact). Either gives the same values, bit for bit. A state over
        several processes is always ``"fixed"``: each pass is a program with collectives, so
        every process must choose the same one, and choices made from each process's own
        timings would differ.

        Example:
          >>> import mmsb_jax as mmsb
          >>> state = mmsb.mmsb_start(semiring="tropical")
          >>> state.propagation_policy = "fixed"
          >>> mmsb.get_stats(state)["adaptive"]["propagation"]["mode"]
          'fixed'
          >>> mmsb.mmsb_stop(state)
        """
        return self._telemetry.strategy.mode

    @propagation_policy.setter
    def propagation_policy(self, mode) -> None:
        mode = check_mode(mode)
        if mode != "fixed" and self._dist is not None:
            raise InvalidArgumentError(
                f"propagation_policy={mode!r}: a state over several processes keeps the policy 'fixed' "
                "(every process must run the same pass; timings differ between processes)")
        self._telemetry.strategy.mode = mode

    # ------------------------------------------------------------------ the replay tail
    def _mark_tail(self, records=None) -> None:
        """The replay tail starts here: after the records a reopen replayed (``records``), or
        at the end of the log (a checkpoint was just taken). Under the lock."""
        tel = self._telemetry
        log_dir = os.path.join(self.path, "log")
        if records is not None:
            sizes = segment_sizes(log_dir)
            end = LogPosition(max(sizes), sizes[max(sizes)]) if sizes else LogPosition(0, 0)
            tel.tail_mark = (first_position(records, end), len(records), 0)
            return tel.tail_mark
        if self._log is not None and self._writes_files:
            tel.tail_mark = (self._log.position, 0, self._log.stats().get("appends", 0))
        return tel.tail_mark

    def _tail(self, log_stats) -> tuple[int, int]:
        """(bytes, records) of the log after the newest checkpoint (what a reopen replays)."""
        mark = getattr(self._telemetry, "tail_mark", None)
        if mark is None:
            return 0, 0
        pos, records, appends = mark
        if self._log is not None and self._writes_files and log_stats:
            sizes = {s.index: s.bytes for s in self._log.segments()}
            return tail_bytes(sizes, pos), records + max(0, log_stats.get("appends", 0) - appends)
        return tail_bytes(segment_sizes(os.path.join(self.path, "log")), pos), records

    # ------------------------------------------------------------------ get_stats sections
    def _telemetry_sections(self, pools: list, log_stats) -> dict:
        """``latency``, ``propagation``, ``checkpoint_files``, ``cost``, ``adaptive``, ``replay``, and
        the ``log`` additions (fsync latency, tail). Under the lock."""
        tel = self._telemetry
        t_bytes, t_records = self._tail(log_stats)
        edges, page_writes, pool_writes = {}, [], []
        ids = self._table.live_ids()
        for pool in self._pools:
            pg = self._pool_graphs.get(pool.index)
            if pg is not None and pg.has_edges:
                a = pg.graph.edge_arrays()
                edges[pool.index] = (a["src"], a["dst"])
            counts = tel.write_counts(pool.index)
            slots = self._table.slot[ids[self._table.pool[ids] == pool.index]].astype(np.int64)
            per_page = np.zeros(slots.shape[0], np.int64)
            inside = slots < counts.shape[0]
            per_page[inside] = counts[slots[inside]]
            page_writes.append(per_page)
            pool_writes.append(int(counts.sum()))
        cost = cost_model(full_seconds=tel.mean("propagate_full"), incremental_seconds=tel.mean("propagate_incremental"),
                          tail_bytes=t_bytes, tail_records=t_records,
                          replay_bytes_per_second=tel.replay["bytes_per_second"], pools=pools, edges=edges,
                          page_writes=np.concatenate(page_writes) if page_writes else [], pool_writes=pool_writes)
        ck = checkpoint_figures(self.path) if os.path.isdir(self.path) else checkpoint_figures("")
        return {
            "latency": tel.latency(),
            "propagation": tel.propagation_figures(),
            "checkpoint_files": ck,
            "cost": cost,
            "adaptive": {"propagation": tel.strategy.report(), "layout": self._layout_stats()},
            "replay": dict(tel.replay, tail_bytes=t_bytes, tail_records=t_records),
            "opened_at": tel.opened_at,
        }

    # ------------------------------------------------------------------ the snapshot file
    def _snapshot_dict(self) -> dict:
        tel = self._telemetry
        return {
            "epoch": self._epoch,
            "written_at": time.time(),
            "pid": os.getpid(),
            "opened_at": tel.opened_at,
            "counters": {k: self._counters[k] for k in STATE_COUNTERS},
            "latency": tel.latency(),
            "propagation": tel.propagation_figures(),
            "adaptive": {"propagation": tel.strategy.report()},
            "replay": dict(tel.replay),
        }

    def _start_snapshots(self) -> None:
        """A state with a directory of its own writes ``telemetry.json`` about once a second."""
        if not self._owns_dir and not self._snapshot and self._writes_files:
            self._telemetry.snapshot_seen = None
            snapshot_every_second(self._snapshot_tick)

    def _snapshot_tick(self) -> bool:
        """The snapshot thread's call: write the snapshot if anything changed since the last
        one; ``False`` once the state is closed. Takes the state's mutex briefly (never waits
        on the tree writer, never runs its deferred writes) and writes outside it."""
        if self._closed:
            return False
        tel = self._telemetry
        mutex = self._lock._mutex
        if not mutex.acquire(timeout=0.05):
            return True  # busy: the next tick tries again
        try:
            if self._closed:
                return False
            seen = (self._epoch, sum(h.count for h in tel.ops.values()))
            if seen == tel.snapshot_seen:
                return True
            snap = self._snapshot_dict()
        finally:
            mutex.release()
        with tel.snapshot_lock:
            write_snapshot(self.path, snap)
        tel.snapshot_seen = seen
        return True

    def _final_snapshot(self) -> None:
        """At close (under the lock): the snapshot of the state as it stops (its counters lend
        reopen what the log cannot recount)."""
        if self._owns_dir or self._snapshot or not self._writes_files or not os.path.isdir(self.path):
            return
        try:
            with self._telemetry.snapshot_lock:
                write_snapshot(self.path, self._snapshot_dict())
        except OSError:  # pragma: no cover - a full disk: the snapshot is not the state of record
            pass

