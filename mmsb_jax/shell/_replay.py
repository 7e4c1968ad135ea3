"""Deterministic replay: rebuild a state from a checkpoint plus log records.

Replay applies records through the same code paths as live operation, with the journal off,
so a replayed state equals the live one bit for bit. Runs of sparse records (single deltas
and batches) are coalesced and routed as one vectorized batch, so replaying a million logged
deltas costs a few router calls, not a million Python calls.
"""

from __future__ import annotations

import os

import numpy as np

from ..log._checkpoint import read_manifest
from ..log._directory import newest_checkpoint
from ..log._decode import (
    Accumulate,
    AddDep,
    CreatePages,
    DeletePages,
    Dense,
    RemoveDep,
    Sparse,
    SparseBatch,
)
from ._tree_replay import TREE_RECORDS, TreeRun
from ..deltas._delta import AccumulateDelta
from .._errors import InvalidArgumentError, SerializationError
from ..deltas._router import pad_rows
from ..log import first_logged_epoch, read_records
from ..semirings import Semiring, get_semiring


def resolve_semiring(name: str, extra=()) -> Semiring:
    """A semiring from its logged name: standard, ``soft_tropical(T)``, or one of ``extra``."""
    for sr in extra:
        if sr.name == name:
            return sr
    try:
        return get_semiring(name)
    except InvalidArgumentError:
        raise SerializationError(
            f"the log names semiring {name!r}, which is not a standard one; pass it to "
            f"mmsb_open(..., semirings=[...]) to replay"
        ) from None


class _SparseRun:
    """Consecutive overwrite records (sparse, sparse batches, dense), routed as one batch.

    A dense record is the sparse delta of its changed positions. Rows of different lengths
    share one array by repeating each short row's last entry (a no-op: same value, same
    index, still last). A run is flushed when the dtype changes or it grows past ~4M entries.
    """

    _MAX_ENTRIES = 1 << 22

    def __init__(self, state):
        self.state = state
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
        self.entries = 0
        self.dtype = None

    def add(self, pids, ind, vals, epoch):
        if pids.shape[0] == 0:
            return
        if ind.shape[1] == 0:  # an empty delta writes nothing but still stamps its pages
            self.flush()
            self.state._table.epoch[pids] = epoch
            self.state._epoch = epoch
            return
        if self.dtype is not None and vals.dtype != self.dtype:
            self.flush()
        self.dtype = vals.dtype
        self.rows.append((pids, ind, vals, epoch))
        self.entries += ind.size
        if self.entries >= self._MAX_ENTRIES:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        state = self.state
        k = max(r[1].shape[1] for r in self.rows)
        pids = np.concatenate([r[0] for r in self.rows]).astype(np.int64)
        ind = pad_rows([r[1] for r in self.rows], k, 0).astype(np.int32)
        vals = pad_rows([r[2] for r in self.rows], k, 0)
        epochs = np.concatenate([np.full(r[0].shape[0], r[3], np.int64) for r in self.rows])
        state._epoch = int(epochs[-1])
        state._check_sparse_batch(pids, ind, vals)
        state._apply_sparse_rows(pids, ind, vals, state._sparse_kernel())
        state._table.epoch[pids] = 0
        np.maximum.at(state._table.epoch, pids, epochs)
        self.rows, self.entries, self.dtype = [], 0, None


def apply_records(state, records, *, semirings=()) -> None:
    """Apply decoded log records to ``state`` in order (its journal must be off)."""
    assert state._log is None, "replay must not journal"
    run = _SparseRun(state)
    trees = TreeRun(state)
    for rec in records:
        if isinstance(rec, TREE_RECORDS):
            run.flush()
            trees.add(rec)
            continue
        trees.flush()
        if isinstance(rec, Sparse):
            run.add(np.array([rec.page_id], np.int64), rec.indices.reshape(1, -1), rec.values.reshape(1, -1), rec.epoch)
            continue
        if isinstance(rec, SparseBatch):
            run.add(np.asarray(rec.page_ids, np.int64), rec.indices, rec.values, rec.epoch)
            continue
        if isinstance(rec, Dense):
            idx = np.flatnonzero(np.asarray(rec.mask).reshape(-1)).astype(np.int32)
            run.add(np.array([rec.page_id], np.int64), idx.reshape(1, -1), np.asarray(rec.values).reshape(1, -1), rec.epoch)
            continue
        run.flush()
        state._epoch = rec.epoch - 1  # each public operation takes the next epoch
        if isinstance(rec, CreatePages):
            if rec.first_page_id != state._table.next_id:
                raise SerializationError(
                    f"log record at epoch {rec.epoch} creates page {rec.first_page_id}, but the next "
                    f"page id is {state._table.next_id}: the log does not continue this state"
                )
            state.create_pages(rec.count, None, np.dtype(rec.dtype), rec.location, shape=tuple(rec.shape))
        elif isinstance(rec, DeletePages):
            for pid in np.asarray(rec.page_ids).tolist():
                state._epoch = rec.epoch - 1
                state.delete_page(int(pid))
        elif isinstance(rec, Accumulate):
            sr = resolve_semiring(rec.semiring, semirings)
            state.route_delta(rec.page_id, AccumulateDelta(np.asarray(rec.payload), sr))
        elif isinstance(rec, AddDep):
            state.add_dependency(rec.parent, rec.child, weight=rec.weight, edge_type=rec.edge_type or "data")
        elif isinstance(rec, RemoveDep):
            state.remove_dependency(rec.parent, rec.child)
        state._epoch = rec.epoch
    run.flush()
    trees.flush()


def rebuild(state, path: str, *, end_epoch: int | None = None, mode: str = "torn_tail", semirings=(),
            checkpoint: str | None = "newest"):
    """Fill an empty, journal-less ``state`` from ``path``: a checkpoint, then the log after it.

    ``checkpoint``: ``"newest"`` (the newest usable one at or before ``end_epoch``), a
    checkpoint directory, or ``None`` (replay the whole log). Returns the log's
    :class:`RecoveryReport`.
    """
    if checkpoint == "newest":
        base, base_epoch = newest_checkpoint(path, end_epoch)
    elif checkpoint is None:
        base, base_epoch = None, 0
    else:
        base, base_epoch = checkpoint, int(read_manifest(checkpoint)["epoch"])
    if base is not None:
        state._restore_checkpoint(base)
    log_dir = os.path.join(path, "log")
    first = first_logged_epoch(log_dir)
    if first is not None and first > base_epoch + 1 and (end_epoch is None or end_epoch > base_epoch):
        raise SerializationError(
            f"the log at {log_dir!r} starts at epoch {first}, but the newest usable checkpoint "
            f"{'at or before epoch ' + str(end_epoch) + ' ' if end_epoch is not None else ''}ends at "
            f"epoch {base_epoch}: the epochs between were compacted away"
        )
    res = read_records(log_dir, mode, base_epoch + 1, end_epoch)
    apply_records(state, res.records, semirings=semirings)
    return res.report
