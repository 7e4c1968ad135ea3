"""Batched routing for :class:`MMSBState`: many deltas, one epoch, one scatter per pool."""

from __future__ import annotations

import jax
import numpy as np

from .. import adaptive
from . import _inputs
from ._distributed import collective

from ..deltas._delta import AccumulateDelta, DenseDelta, SparseDelta, touches_nothing
from .._compat import is_tracer
from .._errors import InvalidArgumentError, InvalidDeltaError, PageNotFoundError
from ..pages import bucket
from ..deltas._rounds import ROUNDS_FROM, apply_rounds
from ..deltas._router import pad_rows, repeated_rows, sparse_rows_winners
from ..deltas._tree_ring import TreeRing


class BatchRouting:
    """Mixin of :class:`MMSBState`: ``route_sparse_batch``, ``batch_route_deltas``, ``drain_ring``."""

    @collective("route_sparse_batch")
    def route_sparse_batch(self, page_ids, indices, values) -> int | None:
        """Route ``n`` sparse deltas given as arrays in one epoch; see :func:`mmsb_jax.route_sparse_batch`."""
        with self._lock:
            self._check_open()
            pids, ind, vals = self._check_sparse_batch(page_ids, indices, values)
            if ind.size == 0:  # no rows, or rows without entries: nothing changes, no epoch
                return None
            kernel = self._sparse_kernel()  # may refuse (a bad MMSB_KERNELS): before any change
            self._epoch += 1
            # Dispatched first, so the device writes while the record goes to the OS (the log
            # holds the record before any observer runs: an observer may raise, the write stays
            # durable). The pages live in memory: written before or after the record, a crash
            # loses them alike, and under fsync="batch" the record reaches the disk later anyway.
            written = self._apply_sparse_rows(pids, ind, vals, kernel, notify=False)
            self._log_sparse_batch(pids, ind, vals)
            for pool, slots in written:
                self._after_write(pool, slots)
            self._counters["deltas_routed"] += int(pids.size)
            self._counters["batches"] += 1
            return self._epoch

    @staticmethod
    def _sparse_kernel() -> bool:
        """Whether the Pallas kernel applies a sparse batch. Asked before the batch takes an
        epoch: the choice reads ``MMSB_KERNELS``, and a bad value raises here."""
        return adaptive.use_pallas("scatter_merge.sparse")

    def _check_sparse_batch(self, page_ids, indices, values):
        for what, x in (("page_ids", page_ids), ("indices", indices), ("values", values)):
            _inputs.refuse_tracers(what, x)
        try:
            pids = np.asarray(page_ids)
            ind = np.asarray(indices)
            untyped = not isinstance(values, (np.ndarray, np.generic, jax.Array))
            vals = np.asarray(values)
        except Exception as e:  # noqa: BLE001 - ragged lists and the like
            raise InvalidDeltaError(f"page_ids, indices and values must be arrays: {e}") from None
        if pids.ndim != 1 or (pids.size and not np.issubdtype(pids.dtype, np.integer)):
            raise InvalidDeltaError(f"page_ids must be a 1-D integer array, got {pids.dtype}{pids.shape}")
        pids = pids.astype(np.int64, copy=False)
        if ind.ndim != 2 or ind.shape[0] != pids.shape[0] or (ind.size and not np.issubdtype(ind.dtype, np.integer)):
            raise InvalidDeltaError(
                f"indices must be an integer array of shape (n, k) with n={pids.shape[0]}, got {ind.dtype}{ind.shape}"
            )
        if vals.shape != ind.shape:
            raise InvalidDeltaError(f"values must have the shape of indices {ind.shape}, got {vals.shape}")
        if pids.size == 0:
            return pids, ind, vals
        bad = (pids < 0) | (pids >= self._table.next_id)
        if not bad.any():
            bad = self._table.pool[pids] < 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PageNotFoundError(int(pids[i]), f"batch entry {i}: page_id={int(pids[i])} does not name a live page")
        pool_idx = self._table.pool[pids]
        lo, hi = int(pool_idx.min()), int(pool_idx.max())
        if untyped:  # Python data takes the pages' dtype (one dtype: one values array is logged)
            dtypes = {self._pools[pi].dtype for pi in ([lo] if lo == hi else np.unique(pool_idx).tolist())}
            if len(dtypes) > 1:
                raise InvalidDeltaError(
                    f"values given as Python data for pages of several dtypes ({sorted(map(str, dtypes))}); "
                    "pass an array of one dtype"
                )
            vals = _inputs.cast_untyped(vals, dtypes.pop(), "values")
        for pi in [lo] if lo == hi else np.unique(pool_idx).tolist():
            pool = self._pools[pi]
            rows = slice(None) if lo == hi else pool_idx == pi
            if np.dtype(vals.dtype) != pool.dtype:
                i = int(np.flatnonzero(pool_idx == pi)[0])
                raise InvalidDeltaError(
                    f"batch entry {i} (page {int(pids[i])}): values dtype {vals.dtype} does not match the page dtype {pool.dtype}"
                )
            sub = shared_row(ind) if lo == hi or ind.strides[0] == 0 else ind[rows]
            if sub.size and int(sub.min()) >= 0 and int(sub.max()) < pool.page_elems:
                continue  # every index inside the page (two reductions, no temporaries)
            out = (sub < 0) | (sub >= pool.page_elems)
            if out.any():
                r, c = np.argwhere(out)[0]
                i = int(np.flatnonzero(pool_idx == pi)[r])
                raise InvalidDeltaError(
                    f"batch entry {i} (page {int(pids[i])}): index {int(sub[r, c])} is out of range "
                    f"for a page of {pool.page_elems} elements"
                )
        return pids, ind, vals

    def _apply_sparse_rows(self, pids: np.ndarray, ind: np.ndarray, vals: np.ndarray, kernel: bool = False,
                           notify: bool = True) -> list:
        """Scatter validated sparse rows (``kernel``: see :meth:`_sparse_kernel`), each target written
        once (last writer wins). ``notify=False``: return the ``(pool, slots)`` written for the
        caller to pass to :meth:`_after_write` (propagation, observers) itself."""
        written = []  # observers run once every pool is written (one may raise)
        pool_idx = self._table.pool[pids]
        one_pool = bool((pool_idx == pool_idx[0]).all())
        for pi in [int(pool_idx[0])] if one_pool else np.unique(pool_idx).tolist():
            pool = self._pools[pi]
            rows = slice(None) if one_pool else pool_idx == pi
            slots = self._table.slot[pids[rows]]
            sub_ind = ind[rows]
            if pool.sharding is None and kernel:  # measured faster, or forced
                from pallas_kernels.scatter_merge import scatter_merge

                pool.array = scatter_merge(
                    pool.array, slots.astype(np.int32), vals[rows], indices=sub_ind.astype(np.int32),
                    interpret=adaptive.interpret(),
                )
                self._table.epoch[pids[rows]] = self._epoch
                written.append((pool, slots))
                continue
            if sub_ind.shape[1] == pool.page_elems and _whole_pages(sub_ind):
                # Every row rewrites its whole page (e.g. replayed page rewrites): keep the last
                # row per page and write rows, instead of scattering every element.
                _, first_from_end = np.unique(slots[::-1], return_index=True)
                win = slots.shape[0] - 1 - first_from_end
                m = bucket(win.size, minimum=1)
                targets = np.arange(pool.capacity, pool.capacity + m, dtype=np.int32)  # padding: dropped
                targets[: win.size] = slots[win]
                new_rows = np.zeros((m, *pool.shape), pool.dtype)
                new_rows[: win.size] = vals[rows][win].reshape(-1, *pool.shape)
                pool.array = pool.ops.write_rows(pool.array, targets, new_rows)
                self._table.epoch[pids[rows]] = self._epoch
                written.append((pool, slots))
                continue
            size = pool.capacity * pool.page_elems
            if size + bucket(sub_ind.size) >= 2**31:
                # flat int32 targets cannot address this pool: apply row by row, in rounds
                # (each slot's r-th row in round r), exactly as batch_route_deltas does
                sub_vals = vals[rows]
                items = [(int(slots[i]), SparseDelta(sub_ind[i].astype(np.int32), sub_vals[i], pool.shape))
                         for i in range(slots.shape[0])]
                for group in _rounds(items):
                    pool.array = _apply_group(pool, group)
                self._table.epoch[pids[rows]] = self._epoch
                written.append((pool, slots))
                continue
            repeated = repeated_rows(slots, pool.capacity)
            if pool.sharding is None and int(np.count_nonzero(repeated)) * sub_ind.shape[1] >= ROUNDS_FROM:
                # many rows of repeated pages: in rounds (linear), not by sorting their targets
                new = apply_rounds(pool.array, slots, sub_ind, vals[rows], pool.page_elems, pool.capacity)
                if new is not None:
                    pool.array = new
                    self._table.epoch[pids[rows]] = self._epoch
                    written.append((pool, slots))
                    continue
            v = vals[rows].reshape(-1)
            win = sparse_rows_winners(slots, sub_ind, pool.page_elems, pool.capacity, repeated)
            if win is not None:  # the winners, in target order (the scatter then walks memory in order)
                v = v[win[0]]
                targets = win[1].astype(np.int32)
            else:
                targets = (slots.astype(np.int32)[:, None] * np.int32(pool.page_elems)
                           + sub_ind.astype(np.int32, copy=False)).reshape(-1)
            # pad to one of 8 sizes per octave (few compiled shapes, at most 12.5% padding) with
            # distinct targets past the end (dropped)
            m = bucket(targets.shape[0], steps=8)
            if m == targets.shape[0]:
                t, vv = targets, v
            else:
                t = np.empty(m, np.int32)
                t[: targets.shape[0]] = targets
                t[targets.shape[0]:] = np.arange(size, size + m - targets.shape[0], dtype=np.int32)
                vv = np.zeros(m, pool.dtype)
                vv[: v.shape[0]] = v
            pool.array = pool.ops.scatter_unique(pool.array, t, vv)
            self._table.epoch[pids[rows]] = self._epoch
            written.append((pool, slots))
        if notify:
            for pool, slots in written:
                self._after_write(pool, slots)
        return written

    @collective("drain_ring")
    def drain_ring(self, ring):
        """Apply and log the deltas a jitted loop appended to ``ring`` (one epoch, source
        ``"jit-ring"``); returns ``(epoch or None, emptied ring)``.

        A :class:`~mmsb_jax.deltas.TreeRing` (from :func:`mmsb_jax.tree_ring`) becomes one
        epoch per recorded step, each tagged with its step; the returned epoch is the last one
        (see :func:`mmsb_jax.tree_ring`).

        Raises:
          RingOverflowError: the ring overflowed; nothing is applied.
          PageNotFoundError / InvalidDeltaError: a bad row; nothing is applied.
        """
        from ..deltas._ring import DeltaRing, ring_cleared, ring_contents

        if isinstance(ring, TreeRing):
            if any(is_tracer(x) for x in (ring.count, ring.steps, *ring.buffers)):  # its only arrays
                _inputs.refuse_tracers("the ring", ring)
            return self._drain_tree_ring(ring)
        if not isinstance(ring, DeltaRing):
            raise InvalidArgumentError(
                f"ring={ring!r} is not a DeltaRing or a TreeRing (see mmsb_jax.delta_ring, mmsb_jax.tree_ring)"
            )
        _inputs.refuse_tracers("the ring", ring)
        with self._lock:
            self._check_open()
        pids, ind, vals = ring_contents(ring)
        with self._lock:
            self._source = "jit-ring"
            try:
                epoch = self.route_sparse_batch(pids, ind, vals)
            finally:
                self._source = None
        return epoch, ring_cleared(ring)

    @collective("batch_route_deltas")
    def batch_route_deltas(self, entries) -> int | None:
        """Route ``[(page_id, delta), ...]`` in one epoch; see :func:`mmsb_jax.batch_route_deltas`."""
        with self._lock:
            self._check_open()
            if isinstance(entries, (str, bytes)) or not hasattr(entries, "__iter__"):
                raise InvalidArgumentError(
                    f"entries={entries!r} is not an iterable of (page_id, delta) pairs"
                )
            entries = list(entries)
            checked = []
            for i, entry in enumerate(entries):
                try:
                    page_id, delta = entry
                except (TypeError, ValueError):
                    raise InvalidDeltaError(f"batch entry {i} is not a (page_id, delta) pair: {entry!r}") from None
                try:
                    pid, pool, slot = self._locate(page_id)
                except PageNotFoundError as e:
                    raise PageNotFoundError(page_id, f"batch entry {i}: {e}") from None
                delta = _inputs.delta(delta, pool, pid, where=f"batch entry {i}, page {pid}")
                if not touches_nothing(delta):  # an empty delta changes nothing: no epoch, no record
                    checked.append((pid, pool, slot, delta))
            all_sparse = all(isinstance(d, SparseDelta) for *_, d in checked) and len(
                {np.dtype(d.dtype) for *_, d in checked}
            ) <= 1  # one values array needs one dtype
            if all_sparse:
                pids, ind, vals = _stack_sparse(checked)
                if pids.size == 0:  # nothing to write: no epoch
                    return None
            elif not checked:
                return None
            kernel = self._sparse_kernel() if all_sparse else False  # may refuse
            self._epoch += 1
            # the whole batch is logged and committed first: observers (called while
            # applying) may raise, the write stays durable
            self._open_log_batch()
            if all_sparse:
                self._log_sparse_batch(pids, ind, vals)
            else:
                for pid, _, _, delta in checked:
                    self._log_delta(pid, delta)
            self._commit_log_batch()
            if all_sparse:
                self._apply_sparse_rows(pids, ind, vals, kernel)
            else:
                by_pool: dict[int, list] = {}
                for pid, pool, slot, delta in checked:
                    by_pool.setdefault(pool.index, []).append((slot, delta))
                    self._table.epoch[pid] = self._epoch
                for pi, items in by_pool.items():
                    pool = self._pools[pi]
                    for group in _rounds(items):
                        pool.array = _apply_group(pool, group)
                for pi, items in by_pool.items():
                    self._after_write(self._pools[pi], sorted({slot for slot, _ in items}))
            self._counters["deltas_routed"] += len(checked)
            self._counters["batches"] += 1
            return self._epoch


def _stack_sparse(checked):
    """Stack sparse deltas into (n,), (n, k), (n, k) arrays, padding short rows.

    A short row is padded by repeating its last entry, which changes nothing (the same value
    written to the same index, still last); an empty row is dropped.
    """
    rows = [(pid, np.asarray(d.indices), np.asarray(d.values)) for pid, _, _, d in checked]
    rows = [r for r in rows if r[1].size]
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.int32), np.zeros((0, 0), np.uint8)
    k = max(r[1].size for r in rows)
    pids = np.array([r[0] for r in rows], np.int64)
    ind = pad_rows([i for _, i, _ in rows], k, 0).astype(np.int32)
    vals = pad_rows([v for _, _, v in rows], k, 0)
    return pids, ind, vals



def _rounds(items):
    """Split ``[(slot, delta), ...]`` (in order) into groups to apply one after another.

    Round ``r`` holds each slot's ``r``-th delta, so slots are unique within a round and a
    round can be one gather-apply-scatter; within a round, deltas are grouped by kind (and
    semiring) so each group stacks into one pytree. Applying the groups round by round equals
    applying every delta in order.
    """
    rank: dict[int, int] = {}
    rounds: list[dict] = []
    for slot, d in items:
        r = rank.get(slot, 0)
        rank[slot] = r + 1
        if r == len(rounds):
            rounds.append({})
        key = (type(d).__name__, getattr(d, "semiring", None))
        rounds[r].setdefault(key, []).append((slot, d))
    return [g for rnd in rounds for g in rnd.values()]


def _apply_group(pool, group):
    """One jitted gather-apply-scatter of same-kind deltas on distinct slots of ``pool``."""
    n = len(group)
    m = bucket(n, minimum=1)
    slots = np.arange(pool.capacity, pool.capacity + m, dtype=np.int32)  # padding: past the end, dropped
    slots[:n] = [s for s, _ in group]
    deltas = [d for _, d in group] + [group[0][1]] * (m - n)
    first = deltas[0]
    if isinstance(first, SparseDelta):
        k = max(int(np.asarray(d.indices).size) for d in deltas)
        if k == 0:
            return pool.array
        ind = pad_rows([d.indices for d in deltas], k, -1).astype(np.int32)  # -1: dropped
        vals = pad_rows([d.values for d in deltas], k, 0).astype(pool.dtype)
        stacked = SparseDelta(ind, vals, first.shape)
    elif isinstance(first, DenseDelta):
        stacked = DenseDelta(np.stack([np.asarray(d.mask) for d in deltas]), np.stack([np.asarray(d.payload) for d in deltas]))
    else:
        stacked = AccumulateDelta(np.stack([np.asarray(d.payload) for d in deltas]), first.semiring)
    return pool.ops.apply_rows(pool.array, slots, stacked)


def _whole_pages(indices: np.ndarray) -> bool:
    """Whether every row of ``indices`` is ``0, 1, ..., k-1`` (a whole-page rewrite)."""
    return bool((shared_row(indices) == np.arange(indices.shape[1], dtype=indices.dtype)).all())


def shared_row(indices: np.ndarray) -> np.ndarray:
    """``indices[:1]`` when ``indices`` (n, k) is one row broadcast over n (a logged SPARSE_BATCH
    with a shared index row reads so), else ``indices``: what checks need to look at."""
    return indices[:1] if indices.ndim == 2 and indices.shape[0] > 1 and indices.strides[0] == 0 else indices
