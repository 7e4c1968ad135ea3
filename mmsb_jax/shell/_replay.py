"""Deterministic replay: rebuild a state from a checkpoint plus log records.

Replay applies records through the same code paths as live operation, with the journal off,
so a replayed state equals the live one bit for bit. Runs of sparse records (single deltas
and batches) are coalesced and routed as one vectorized batch, so replaying a million logged
deltas costs a few router calls, not a million Python calls.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from ..log._checkpoint import read_manifest, read_resume
from ..log._directory import epoch_of_name, last_closed_epoch, list_checkpoints, log_floor
from ..log._records import (
    Accumulate,
    AddDep,
    AddDeps,
    CreatePages,
    DeletePages,
    Dense,
    Derive,
    RemoveDep,
    RemoveDeps,
    Rows,
    Sparse,
    SparseBatch,
    TreeDef,
    TreeStep,
)
from ._batch import shared_row
from ._tree_replay import TreeRun
from ..deltas._delta import AccumulateDelta
from .._errors import (
    CorruptLogError,
    DeriveFunctionError,
    InvalidArgumentError,
    InvalidDeltaError,
    MMSBError,
    PageNotFoundError,
    SerializationError,
)
from ..deltas._router import pad_rows
from ..log import SkippedRange, read_records, segment_path
from ..semirings import Semiring, get_semiring
from ..telemetry import read_snapshot
from ..telemetry._counters import replayed_counters
from ..telemetry._tail import segment_sizes, tail_bytes


class NotDamage(SerializationError):
    """A record this process cannot replay for want of what only the caller can give (JAX's
    64-bit mode, a semiring): not damage, so no recovery mode skips it (skipping it would open
    a state that never was). Replay raises it as a :class:`SerializationError` naming the record."""


def resolve_semiring(name: str, extra=()) -> Semiring:
    """A semiring from its logged name: standard, ``soft_tropical(T)``, or one of ``extra``
    (the ``semirings=`` of the open, replay or restore; checked here, before any replay).

    Raises:
      InvalidArgumentError: ``extra`` is not a sequence of :class:`~mmsb_jax.semirings.Semiring`.
    """
    if isinstance(extra, Semiring):
        extra = (extra,)
    bad = isinstance(extra, (str, bytes))
    if not bad:
        try:
            extra = tuple(extra)
        except TypeError:
            bad = True
    if bad or not all(isinstance(sr, Semiring) for sr in extra):
        raise InvalidArgumentError(
            f"semirings={extra!r:.80} must be a sequence of Semiring records (e.g. "
            "[semirings.MAX_PLUS._replace(name='mine')]); standard semirings need not be given")
    for sr in extra:
        if sr.name == name:
            return sr
    try:
        return get_semiring(name)
    except InvalidArgumentError:
        raise NotDamage(
            f"the log names semiring {name!r}, which is not a standard one; pass it to "
            f"mmsb_open(..., semirings=[...]) (or replay_to_epoch(..., semirings=[...])) to replay"
        ) from None


class _SparseRun:
    """Consecutive overwrite records (sparse, sparse batches, dense), routed as one batch.

    A dense record is the sparse delta of its changed positions. Rows of different lengths
    share one array by repeating each short row's last entry (a no-op: same value, same
    index, still last). A run is flushed when the dtype changes or it grows past ~1M entries
    (measured: replaying 1M sparse deltas of 4 entries took 187 ms in runs of 4M entries, 78 ms
    in runs of 1M: the device applies one run while the host reads and plans the next, and a
    run's arrays stay in cache).
    Rows are checked when the run is flushed; if a check fails, the rows are checked record
    by record to name the record at fault.
    """

    _MAX_ENTRIES = 1 << 20

    def __init__(self, state, replay):
        self.state = state
        self.replay = replay
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, object]] = []
        self.entries = 0
        self.dtype = None

    def add(self, rec, pids, ind, vals):
        state = self.state
        if pids.shape[0] == 0:
            return
        if ind.shape[1] == 0:  # an empty delta writes nothing but still stamps its pages
            self.flush()
            state._check_sparse_batch(pids, ind, vals)
            state._table.epoch[pids] = rec.epoch
            return
        if self.dtype is not None and vals.dtype != self.dtype:
            self.flush()
        self.dtype = vals.dtype
        self.rows.append((pids, ind, vals, rec))
        self.entries += ind.size
        if self.entries >= self._MAX_ENTRIES:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        rows, self.rows, self.entries, self.dtype = self.rows, [], 0, None
        state = self.state
        k = max(r[1].shape[1] for r in rows)
        pids = np.concatenate([r[0] for r in rows])
        ind = _one_row(rows, k, pids.shape[0])
        if ind is None:
            ind = pad_rows([r[1] for r in rows], k, 0).astype(np.int32)
        vals = pad_rows([r[2] for r in rows], k, 0)
        try:
            state._check_sparse_batch(pids, ind, vals)
        except MMSBError:
            rows = self._drop_bad(rows)  # raises in strict replay; drops the bad records otherwise
            if not rows:
                return
            k = max(r[1].shape[1] for r in rows)
            pids = np.concatenate([r[0] for r in rows])
            ind = pad_rows([r[1] for r in rows], k, 0).astype(np.int32)
            vals = pad_rows([r[2] for r in rows], k, 0)
        epochs = np.concatenate([np.full(r[0].shape[0], r[3].epoch, np.int64) for r in rows])
        state._continue_at(int(epochs[-1]))
        state._apply_sparse_rows(pids, ind, vals, state._sparse_kernel())
        state._table.epoch[pids] = 0
        np.maximum.at(state._table.epoch, pids, epochs)

    def _drop_bad(self, rows):
        kept = []
        for pids, ind, vals, rec in rows:
            try:
                self.state._check_sparse_batch(pids, ind, vals)
            except MMSBError as e:
                self.replay.refuse(rec, e)
                continue
            kept.append((pids, ind, vals, rec))
        return kept


def _one_row(rows, k: int, n: int) -> np.ndarray | None:
    """The run's indices as one int32 row broadcast over its ``n`` rows, when every record
    logged the same shared row of ``k`` (e.g. whole-page rewrites), else None: checks and the
    whole-page write then look at one row, not n (nothing is materialized)."""
    first = shared_row(rows[0][1])
    if first.shape != (1, k) or first.dtype != np.int32:
        return None
    for r in rows[1:]:
        other = shared_row(r[1])
        if other.shape != (1, k) or not np.array_equal(other, first):
            return None
    return np.broadcast_to(first, (n, k))


#: The largest epoch (and page id) a replayed record may carry: far past any real state, and
#: small enough for int64 arithmetic.
MAX_EPOCH = 2**62


def _as_ids(rec, ids) -> np.ndarray:
    """Logged page ids (u64) as int64, refusing any that no page could have."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and int(ids.max()) >= MAX_EPOCH:
        raise PageNotFoundError(int(ids.max()), f"page id {int(ids.max())} is past any page id this store can hold")
    return ids.astype(np.int64)


class _Replay:
    """One pass of log records into a state: contiguity, dispatch, and errors that name the
    record's file and offset."""

    def __init__(self, state, log_dir, *, start_epoch: int, strict: bool, semirings=(), report=None):
        self.state = state
        self.log_dir = log_dir
        self.epoch = start_epoch  # the last epoch applied (the checkpoint's, at first)
        self.strict = strict
        self.semirings = semirings
        self.report = report
        self.run = _SparseRun(state, self)
        self.trees = TreeRun(state)  # tree-journal page writes, applied together

    def error(self, rec, reason: str) -> CorruptLogError:
        path = segment_path(self.log_dir, rec.segment) if rec.segment >= 0 else self.log_dir
        return CorruptLogError(path, max(rec.offset, 0), f"{rec.kind.name} record of epoch {rec.epoch}: {reason}")

    def refuse(self, rec, err: Exception) -> None:
        """A record that cannot be applied: an error in strict replay, a skipped range otherwise."""
        reason = f"{type(err).__name__}: {err}"
        if self.strict or self.report is None:
            raise self.error(rec, reason) from err
        path = segment_path(self.log_dir, rec.segment) if rec.segment >= 0 else self.log_dir
        self.report.skipped.append(SkippedRange(str(path), rec.offset, rec.offset, f"not applied: {reason}"))

    def apply(self, records) -> None:
        state = self.state
        for rec in records:
            if rec.epoch > MAX_EPOCH:  # no state gets here one epoch at a time
                self.refuse(rec, InvalidArgumentError(f"epoch {rec.epoch} is past the largest epoch {MAX_EPOCH}"))
                continue
            if rec.epoch != self.epoch:
                if rec.epoch != self.epoch + 1:
                    missing = f"epochs {self.epoch + 1}..{rec.epoch - 1} are" if rec.epoch > self.epoch + 1 else "it is"
                    reason = f"epoch {rec.epoch} follows epoch {self.epoch}: {missing} missing from the log"
                    if self.strict:
                        raise self.error(rec, reason + " (each operation takes the next epoch)")
                    if self.report is not None:  # salvage: the gap is reported, the record applies
                        path = segment_path(self.log_dir, rec.segment) if rec.segment >= 0 else self.log_dir
                        self.report.skipped.append(SkippedRange(str(path), rec.offset, rec.offset, reason))
                self.epoch = rec.epoch
            elif not rec.batched:
                raise self.error(rec, f"a second record of epoch {rec.epoch} outside a batch")
            handler = _HANDLERS.get(type(rec))
            state._tail_at_open += 1  # the checkpoint policy counts the tail a reopen replayed
            if state._tail_first is None:
                state._tail_first = (rec.segment, rec.offset)
            try:
                if handler is None:
                    raise SerializationError(f"this build cannot replay {type(rec).__name__} records")
                if handler not in _TREE_HANDLERS:
                    self.trees.flush()
                if handler is not _overwrite:
                    self.run.flush()
                    state._continue_at(rec.epoch)
                handler(self, rec)
            except (CorruptLogError, DeriveFunctionError):  # a function the caller must give: not damage
                raise
            except NotDamage as e:  # what the caller must give: in every recovery mode
                path = segment_path(self.log_dir, rec.segment) if rec.segment >= 0 else self.log_dir
                raise SerializationError(
                    f"{path} at byte offset {max(rec.offset, 0)}: {rec.kind.name} record of epoch {rec.epoch} "
                    f"cannot be replayed here (the log is not damaged): {e}") from None
            except (MMSBError, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as e:
                self.refuse(rec, e)
            state._continue_at(rec.epoch, done=True)
        self.run.flush()
        self.trees.flush()
        state._continue_at(self.epoch, done=True)


def _overwrite(replay: _Replay, rec) -> None:
    """SPARSE, SPARSE_BATCH and DENSE records join the current run of overwrites."""
    state = replay.state
    if isinstance(rec, SparseBatch):
        replay.run.add(rec, _as_ids(rec, rec.page_ids), rec.indices, rec.values)
        return
    (pid,) = _as_ids(rec, [rec.page_id])
    if isinstance(rec, Sparse):
        replay.run.add(rec, np.array([pid]), rec.indices.reshape(1, -1), rec.values.reshape(1, -1))
        return
    _, pool, _ = state._locate(pid)
    if rec.mask.shape != pool.shape:
        raise InvalidDeltaError(f"mask of shape {rec.mask.shape} for page {pid} of shape {pool.shape}")
    idx = np.flatnonzero(np.asarray(rec.mask).reshape(-1)).astype(np.int32)
    replay.run.add(rec, np.array([pid]), idx.reshape(1, -1), np.asarray(rec.values).reshape(1, -1))


def _create(replay: _Replay, rec) -> None:
    state = replay.state
    if rec.first_page_id != state._table.next_id:
        raise SerializationError(
            f"it creates page {rec.first_page_id}, but the next page id is {state._table.next_id}: "
            "the log does not continue this state"
        )
    if rec.count < 1:
        raise InvalidArgumentError(f"count={rec.count}: a logged creation makes at least one page")
    dt = np.dtype(rec.dtype)
    if dt.itemsize == 8 and jax.dtypes.canonicalize_dtype(dt) != dt:
        raise NotDamage(f"its pages are {dt}, which needs JAX's 64-bit mode: call "
                        "jax.config.update('jax_enable_x64', True) before opening")
    state.create_pages(rec.count, None, np.dtype(rec.dtype), rec.location, shape=tuple(rec.shape), fill=rec.fill)


def _delete(replay: _Replay, rec) -> None:
    state = replay.state
    ids = _as_ids(rec, rec.page_ids)
    if np.unique(ids).size != ids.size:
        raise InvalidArgumentError(f"page ids {ids.tolist()} repeat")
    for pid in ids.tolist():
        state._locate(pid)  # every id is live: checked before the first delete
    for pid in ids.tolist():
        state._continue_at(rec.epoch)
        state.delete_page(pid)


def _accumulate(replay: _Replay, rec) -> None:
    sr = resolve_semiring(rec.semiring, replay.semirings)
    replay.state.route_delta(rec.page_id, AccumulateDelta(np.asarray(rec.payload), sr))


def _add_dep(replay: _Replay, rec) -> None:
    replay.state.add_dependency(rec.parent, rec.child, weight=rec.weight, edge_type=rec.edge_type or "data")


def _remove_dep(replay: _Replay, rec) -> None:
    replay.state.remove_dependency(rec.parent, rec.child)


def _add_deps(replay: _Replay, rec) -> None:
    replay.state._add_edges(_as_ids(rec, rec.parents), _as_ids(rec, rec.children), np.asarray(rec.weights, np.float64),
                     rec.edge_type or "data")


def _remove_deps(replay: _Replay, rec) -> None:
    replay.state._remove_edges(_as_ids(rec, rec.parents), _as_ids(rec, rec.children))


def _derive(replay: _Replay, rec) -> None:
    state = replay.state
    fn = state._derive_fns.get(rec.name)
    if fn is None:
        raise DeriveFunctionError(
            rec.name, f"page {rec.child} is derived by the function logged as {rec.name!r}, which was not given: "
                      f"pass mmsb_open(..., derive={{{rec.name!r}: fn}}) (and replay_to_epoch the same)")
    state.derive(rec.child, fn, _as_ids(rec, rec.parents).tolist(), name=rec.name)


def _rows(replay: _Replay, rec) -> None:
    """ROWS joins the run of tree-journal writes (applied before any other kind of record)."""
    (pid,) = _as_ids(rec, [rec.page_id])
    replay.trees.add_rows(rec, pid)


def _tree_def(replay: _Replay, rec) -> None:
    replay.trees.define(rec, _as_ids(rec, rec.page_ids))


def _tree_step(replay: _Replay, rec) -> None:
    replay.trees.tag(rec)


#: How each record type is replayed: ``handler(replay, record)``, raising an ``MMSBError`` when
#: the record cannot apply (replay wraps it with the record's file and offset).
_HANDLERS = {
    Sparse: _overwrite,
    SparseBatch: _overwrite,
    Dense: _overwrite,
    CreatePages: _create,
    DeletePages: _delete,
    Accumulate: _accumulate,
    AddDep: _add_dep,
    RemoveDep: _remove_dep,
    AddDeps: _add_deps,
    RemoveDeps: _remove_deps,
    Derive: _derive,
    Rows: _rows,
    TreeDef: _tree_def,
    TreeStep: _tree_step,
}
_TREE_HANDLERS = (_rows, _tree_def, _tree_step)


def apply_records(state, records, *, log_dir, start_epoch: int = 0, strict: bool = True, semirings=(),
                  report=None) -> None:
    """Apply decoded log records to ``state`` in order (its journal must be off).

    ``strict`` (the ``torn_tail`` and ``absolute`` recovery modes): epochs must continue
    ``start_epoch`` one by one, and a record that cannot apply raises :class:`CorruptLogError`
    naming its file and offset. Otherwise (salvage modes) such a record is skipped and listed
    in ``report.skipped``.
    """
    assert state._log is None, "replay must not journal"
    _Replay(state, log_dir, start_epoch=start_epoch, strict=strict, semirings=semirings, report=report).apply(records)


def _measure_replay(state, path: str, records, seconds: float, base_epoch: int) -> None:
    """After a replay: its throughput and tail (telemetry), and the state's counters (the
    checkpoint's or the last snapshot's, plus the records replayed after them)."""
    tel = state._telemetry
    tel.observe("replay", seconds)
    pos, n, _ = state._mark_tail(records)
    replayed = tail_bytes(segment_sizes(os.path.join(path, "log")), pos)
    tel.replay.update(seconds=seconds, records=n, bytes=replayed,
                      bytes_per_second=replayed / seconds if replayed and seconds > 0 else None)
    try:
        snapshot = read_snapshot(path)
    except SerializationError:  # a damaged snapshot lends nothing
        snapshot = None
    base = getattr(state, "_ckpt_counters", None) or (base_epoch, None)
    state._counters.update(replayed_counters(records, checkpoint=base, snapshot=snapshot, end_epoch=state.epoch))


def rebuild(state, path: str, *, end_epoch: int | None = None, mode: str = "torn_tail", semirings=(),
            checkpoint: str | None = "newest"):
    """Fill an empty, journal-less ``state`` from ``path``: a checkpoint, then the log after it.

    ``checkpoint``: ``"newest"``: the newest checkpoint at or before ``end_epoch`` that
    restores cleanly and that the log continues; a damaged one is skipped for the next older
    one, and finally for the log alone (when it still starts at epoch 1); each skip is listed
    in the report's ``skipped_checkpoints`` as ``(directory, reason)``. A checkpoint
    directory: that one (an error if it cannot be restored). ``None``: the whole log.

    Returns the log's :class:`~mmsb_jax.log.RecoveryReport`.

    Raises:
      SerializationError: no checkpoint can be restored and the log does not start at epoch
        1 (compacted); ``CorruptLogError`` (a subclass) names the file and offset of a damaged
        or impossible record.
    """
    log_dir = os.path.join(path, "log")
    first = log_floor(path)  # the log cannot rebuild the epochs before this one (compacted)
    skipped, claims = [], []  # claims: epochs that damaged checkpoints say they held
    start_at = None  # where the restored checkpoint's log went on (a checked hint)
    if checkpoint == "newest":
        found = list_checkpoints(path)
        candidates = [c for c in found if c[1] >= 0 and (end_epoch is None or c[1] <= end_epoch)]
        candidates.sort(key=lambda c: -c[1])
        candidates.append((None, 0))
        for d, e in found:
            if e < 0:  # unreadable manifest: the epoch its name claims, if any
                claim = epoch_of_name(d)
                if end_epoch is None or (claim is not None and claim <= end_epoch):
                    skipped.append((d, "its manifest cannot be read"))
                    claims.append((d, claim))
    elif checkpoint is None:
        candidates = [(None, 0)]
    else:
        candidates = [(checkpoint, int(read_manifest(checkpoint)["epoch"]))]
    for base, base_epoch in candidates:
        if first > base_epoch + 1 and (end_epoch is None or end_epoch > base_epoch):
            why = f"the log starts at epoch {first}: the epochs after {base_epoch} were compacted away"
            if base is None:
                raise SerializationError(
                    f"cannot rebuild {path!r}: {why}, and no usable checkpoint covers them"
                    + "".join(f"; skipped checkpoint {d}: {r}" for d, r in skipped)
                )
            skipped.append((base, why))
            continue
        if base is None:
            break
        try:
            state._restore_checkpoint(base)  # all or nothing: a failure leaves the state empty
        except SerializationError as e:
            if len(candidates) == 1:
                raise
            skipped.append((base, str(e)))
            claims.append((base, base_epoch))
            continue
        start_at = read_resume(base, base_epoch)
        break
    strict = mode in ("torn_tail", "absolute", "tolerate_corrupted_tail_records", "absolute_consistency")
    tel = state._telemetry
    t0 = time.perf_counter()
    tel.paused += 1  # the replayed operations are not timed one by one: the replay is, as a whole
    try:
        res = read_records(log_dir, mode, base_epoch + 1, end_epoch, start_at=start_at)
        res.report.skipped_checkpoints = skipped
        # (point_in_time opens the intact prefix: a record that is intact but cannot apply ends
        # the open with an error naming it, as strict modes do; only skip_corrupt skips it)
        apply_records(state, res.records, log_dir=log_dir, start_epoch=base_epoch,
                      strict=strict or mode == "point_in_time", semirings=semirings, report=res.report)
    finally:
        tel.paused -= 1
    _measure_replay(state, path, res.records, time.perf_counter() - t0, base_epoch if base is not None else 0)
    closed = last_closed_epoch(path)
    if end_epoch is None and strict and state.epoch < closed:
        raise SerializationError(
            f"the state at {path!r} was stopped at epoch {closed}, but its log and checkpoints now reach only "
            f"epoch {state.epoch}: records made durable were lost (a truncated or missing log file?); "
            "mmsb_open(..., recovery='point_in_time') opens what is left"
        )
    for d, claim in claims:  # what stands in for a damaged checkpoint must reach as far as it did
        if claim is None or state.epoch < claim:
            reason = dict(skipped)[d]
            raise SerializationError(
                f"checkpoint {d!r} cannot be used ({reason}), and the older checkpoints and the log "
                f"rebuild the state only to epoch {state.epoch}"
                + (f", not to its epoch {claim}" if claim is not None else " (its epoch is unknown)")
            )
    return res.report
