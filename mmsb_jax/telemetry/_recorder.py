"""What one state measures while it runs: :class:`Telemetry`, and :func:`timed_call`, the one
place operations are timed.

Process figures (latencies, fsync times, propagation passes, where writes landed) start
fresh with every open; the state's counters (pages created, updates, ...) are the shell's and
survive reopen (see :mod:`._counters`). Imports nothing of mmsb_jax above the telemetry package.
"""

from __future__ import annotations

import functools
import threading
import time

import jax.numpy as jnp
import numpy as np

from ._histogram import Histogram
from ._strategy import PropagationStrategy

#: Per-operation latency histograms that the shell feeds besides the timed operations.
PASSES = ("propagate_full", "propagate_incremental")

_perf = time.perf_counter


def timed_call(state, kind: str, fn, args, kwargs):
    """``fn(state, *args, **kwargs)``, its wall time counted in ``state``'s ``kind`` histogram
    (when it returns; a call that raises is not counted). Objects without telemetry (a path
    given to a function that takes a path or a state) run untimed.

    Example:
      >>> class S: _telemetry = Telemetry()
      >>> s = S()
      >>> timed_call(s, "noop", lambda st, x: x + 1, (1,), {})
      2
      >>> s._telemetry.ops["noop"].count
      1
    """
    tel = getattr(state, "_telemetry", None)
    if tel is None:
        return fn(state, *args, **kwargs)
    t0 = _perf()
    out = fn(state, *args, **kwargs)
    tel.observe(kind, _perf() - t0)
    return out


def timed(kind: str):
    """Decorate a method (or function of a state) so :func:`timed_call` times every call as
    ``kind``: for operations that are not collectives (those are timed by ``collective``).

    Example:
      >>> class S:
      ...     _telemetry = Telemetry()
      ...     @timed("ping")
      ...     def ping(self):
      ...         return "pong"
      >>> S().ping(), S._telemetry.ops["ping"].count
      ('pong', 1)
    """

    def wrap(fn):
        @functools.wraps(fn)
        def run(state, *args, **kwargs):
            return timed_call(state, kind, fn, args, kwargs)

        return run

    return wrap


class Telemetry:
    """Latency histograms, propagation figures, fsync times and write counts of one state.

    Attributes:
      ops: operation name -> :class:`Histogram` of seconds (created on first use).
      fsync: :class:`Histogram` of the log's fdatasync times (fed by the writer's threads).
      propagation: counters of propagation passes (see :meth:`full_pass`, :meth:`incremental_pass`).
      replay: what the last open replayed: ``seconds``, ``records``, ``bytes``,
        ``bytes_per_second`` (``None`` until an open replays).
      strategy: the :class:`PropagationStrategy` choosing incremental vs full passes.
      paused: > 0 while a replay runs: its operations are not timed (``open`` is, as a whole).

    Example:
      >>> tel = Telemetry()
      >>> tel.observe("update_page", 2e-6)
      >>> tel.count_writes(0, [3]); tel.count_writes(0, [3, 5])
      >>> tel.ops["update_page"].count, tel.write_counts(0).tolist()
      (1, [0, 0, 0, 2, 0, 1])
    """

    def __init__(self):
        self.ops: dict[str, Histogram] = {}
        self.fsync = Histogram()
        self.paused = 0
        self.opened_at = time.time()
        self.propagation = {
            "full_passes": 0, "full_nodes": 0, "full_edges": 0, "full_rounds": 0,
            "incremental_passes": 0, "incremental_dirty": 0, "incremental_changed": 0, "incremental_nodes": 0,
        }
        self._changed: list = []  # changed-node counts of incremental passes not yet read (device scalars)
        self._writes: dict[int, np.ndarray] = {}  # pool index -> writes per slot
        self.replay = {"seconds": None, "records": 0, "bytes": 0, "bytes_per_second": None}
        #: where the replay tail starts: (LogPosition, records before it counted, log appends then)
        self.tail_mark = None
        self.snapshot_lock = threading.Lock()  # one writer of telemetry.json at a time
        self.snapshot_seen = None  # (epoch, timed calls) of the last snapshot written
        self.strategy = PropagationStrategy()
        self._lock = threading.Lock()
        self.registry = None  # the prometheus CollectorRegistry, made by serve_metrics / registry_for

    # ------------------------------------------------------------------ latencies
    def observe(self, kind: str, seconds: float) -> None:
        """Count ``seconds`` in the ``kind`` histogram (nothing while a replay runs)."""
        if self.paused:
            return
        h = self.ops.get(kind)
        if h is None:
            h = self.ops.setdefault(kind, Histogram())
        h.observe(seconds)

    def observe_fsync(self, seconds: float) -> None:
        """The log writer's hook: one fdatasync took ``seconds``."""
        self.fsync.observe(seconds)

    def mean(self, kind: str) -> float | None:
        h = self.ops.get(kind)
        return None if h is None else h.mean

    # ------------------------------------------------------------------ propagation
    def full_pass(self, seconds: float, nodes: int, edges: int, rounds: int) -> None:
        """A full propagation pass over ``nodes`` / ``edges`` in ``rounds`` program steps."""
        p = self.propagation
        p["full_passes"] += 1
        p["full_nodes"] += nodes
        p["full_edges"] += edges
        p["full_rounds"] += rounds
        self.observe("propagate_full", seconds)

    def incremental_pass(self, seconds: float, nodes: int, dirty: int, changed) -> None:
        """An incremental pass from ``dirty`` nodes of a graph of ``nodes``; ``changed`` is the
        pass's bool mask (counted on the device; read back lazily so the write path does not wait)."""
        p = self.propagation
        p["incremental_passes"] += 1
        p["incremental_dirty"] += dirty
        p["incremental_nodes"] += nodes
        self.observe("propagate_incremental", seconds)
        with self._lock:
            self._changed.append(jnp.count_nonzero(changed))  # a device scalar: the mask is not kept
            if len(self._changed) > 256:
                self._fold_changed()

    def _fold_changed(self) -> None:  # holds _lock
        pending, self._changed = self._changed, []
        self.propagation["incremental_changed"] += int(sum(int(c) for c in pending))

    def propagation_figures(self) -> dict:
        """The pass counters plus means per pass and the cutoff rate: the share of the graph an
        incremental pass left unchanged (``1 - changed / nodes``)."""
        with self._lock:
            self._fold_changed()
        p = dict(self.propagation)
        nf, ni = p["full_passes"], p["incremental_passes"]
        p["nodes_per_full_pass"] = p["full_nodes"] / nf if nf else None
        p["edges_per_full_pass"] = p["full_edges"] / nf if nf else None
        p["rounds_per_full_pass"] = p["full_rounds"] / nf if nf else None
        p["cone_per_incremental_pass"] = p["incremental_changed"] / ni if ni else None
        p["dirty_per_incremental_pass"] = p["incremental_dirty"] / ni if ni else None
        nodes = p["incremental_nodes"]
        p["cutoff_rate"] = 1.0 - p["incremental_changed"] / nodes if nodes else None
        return p

    # ------------------------------------------------------------------ where writes land
    def count_writes(self, pool: int, slots) -> None:
        """Count one write to each of ``slots`` of pool ``pool`` (the entropy's input)."""
        arr = self._writes.get(pool)
        if len(slots) == 1:
            s = int(slots[0])
            if arr is None or s >= arr.shape[0]:
                arr = self._grow(pool, s + 1)
            arr[s] += 1
            return
        idx = np.asarray(slots, np.int64).reshape(-1)
        if not idx.size:
            return
        top = int(idx.max()) + 1
        if arr is None or top > arr.shape[0]:
            arr = self._grow(pool, top)
        np.add.at(arr, idx, 1)

    def move_writes(self, pool: int, order) -> None:
        """Pages of pool ``pool`` moved: the one in row ``order[i]`` is now in row ``i``."""
        arr = self._writes.get(pool)
        if arr is None:
            return
        order = np.asarray(order, np.int64)
        moved = np.zeros(max(16, order.size), np.int64)
        inside = order < arr.shape[0]
        moved[: order.size][inside] = arr[order[inside]]
        self._writes[pool] = moved

    def _grow(self, pool: int, n: int) -> np.ndarray:
        old = self._writes.get(pool)
        size = max(n, 16, 2 * (old.shape[0] if old is not None else 0))
        arr = np.zeros(size, np.int64)
        if old is not None:
            arr[: old.shape[0]] = old
        self._writes[pool] = arr
        return arr

    def write_counts(self, pool: int) -> np.ndarray:
        """Writes per slot of pool ``pool`` since open (replayed writes included)."""
        arr = self._writes.get(pool)
        return np.zeros(0, np.int64) if arr is None else arr[: _used(arr)]

    def pools_written(self) -> list[int]:
        return sorted(self._writes)

    # ------------------------------------------------------------------ summaries
    def latency(self) -> dict:
        """Operation name -> :meth:`Histogram.summary` (seconds), the fsync histogram as ``fsync``."""
        out = {k: h.summary() for k, h in sorted(self.ops.items())}
        if self.fsync.count:
            out["fsync"] = self.fsync.summary()
        return out


def _used(arr: np.ndarray) -> int:
    nz = np.flatnonzero(arr)
    return int(nz[-1]) + 1 if nz.size else 0
