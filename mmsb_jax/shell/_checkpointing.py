"""Checkpoint writing and restoring for :class:`MMSBState` (format in ``_checkpoint``)."""

from __future__ import annotations

import functools
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .._errors import DeriveFunctionError, InvalidArgumentError, MMSBError, SerializationError, StateClosedError
from ._tree_restore import check_checkpoint_trees
from ..log._checkpoint import (check_new_directory, is_checkpoint, load_arrays, make_directory, read_manifest,
                               save_checkpoint)
from ..log._directory import prune_checkpoints
from . import _dist_checkpoint, _inputs
from ._distributed import collective
from ._restore import check_checkpoint
from ..telemetry._counters import STATE_COUNTERS


def _once_set(ready, fn, *args):
    """``fn(*args)`` once ``ready`` is set (given up after 5 minutes: nobody will set it)."""
    if not ready.wait(300):
        raise SerializationError("a checkpoint waited 5 minutes for its directory to be made; giving up")
    return fn(*args)


def _done(value) -> Future:
    future = Future()
    future.set_result(value)
    return future


class Checkpointing:
    """Mixin of :class:`MMSBState`: ``checkpoint`` and restoring one into an empty state."""

    # ------------------------------------------------------------------ checkpoints
    @collective("checkpoint")
    def checkpoint(self, directory=None, *, block: bool = True):
        """Write a checkpoint (orbax arrays + JSON manifest); returns its directory.

        ``directory`` defaults to ``<state path>/checkpoints/epoch-<epoch>``; when that already
        holds a checkpoint (nothing was committed since), nothing is written. With
        ``block=False`` the state is copied to host memory now and written by a background
        thread; a ``concurrent.futures.Future`` of the directory is returned, and a failure is
        raised by its ``result()`` and again, once, by the next ``checkpoint`` or ``mmsb_stop``
        (never swallowed).

        A request for a directory that a background checkpoint of the same epoch is still
        writing joins it: ``block=False`` returns that same future, ``block=True`` waits for it
        and returns the directory (or raises its failure). Safe to call from several threads.

        Raises:
          SerializationError: ``directory`` already holds a checkpoint or anything else (it must
            be new, empty, or left by a crashed checkpoint; never a state's own directory), is
            below a file, or cannot be made (or, with ``block=True``,
            a background checkpoint of another epoch is writing it); writing failed; or an
            earlier background checkpoint failed.
          StateClosedError: the state is stopped.
        """
        with self._lock:
            self._raise_failed_checkpoint()
            if self._closed:
                raise StateClosedError(f"the state at {self.path!r} is stopped")
            default = directory is None
            if default:
                if self._snapshot:
                    raise InvalidArgumentError("a snapshot's checkpoint needs an explicit directory")
                directory = os.path.join(self.path, "checkpoints", f"epoch-{self._epoch:012d}")
            directory = _inputs.path(directory, "directory")
            if os.path.lexists(directory) and not os.path.isdir(directory):
                raise SerializationError(f"directory={directory!r} exists and is not a directory")
            joined = next((f for d, e, f, _ in self._ckpt_pending if d == directory and e == self._epoch), None)
            if joined is None:
                if block and any(d == directory for d, *_ in self._ckpt_pending):
                    raise SerializationError(
                        f"{directory!r} is being written by a background checkpoint of another epoch; "
                        "choose a new directory"
                    )
                if default and is_checkpoint(directory):  # it already holds this state
                    return directory if block else _done(directory)
                check_new_directory(directory)  # here, not only in the writer (block=False)
                if self._dist is None:  # (several processes: process 0 makes it, agreed)
                    make_directory(directory)  # a path that cannot be made is refused here too
                return self._write_checkpoint(directory, block, prune=default)
            if not block:
                return joined
        # Wait without the lock (the writer never takes it; other threads may go on).
        error = joined.exception()
        self._raise_failed_checkpoint()  # it failed: raised here, once (not again by mmsb_stop)
        if error is not None:  # another thread reported it first: still an error here
            raise SerializationError(f"a background checkpoint failed: {error}") from error
        return joined.result()

    def _maybe_checkpoint(self) -> None:
        """After an operation: a background checkpoint if the policy finds the tail too long
        (and none is being written already). See :mod:`mmsb_jax.adaptive._checkpoint_policy`."""
        policy, log = self._ckpt_policy, self._log
        if policy is None or log is None or self._closed or self.read_only:
            return
        if any(not f.done() for _, _, f, _ in self._ckpt_pending):
            return
        records, nbytes = log.appended()
        records += self._tail_at_open - self._tail_mark[0]
        nbytes += self._tail_bytes_at_open - self._tail_mark[1]
        due, why = policy.due(records, nbytes)
        if due:
            self.checkpoint(block=False)
            self._policy.update(checkpoints=self._policy["checkpoints"] + 1, last_reason=why,
                                last_epoch=self._epoch)

    def _policy_stats(self) -> dict:
        """``get_stats()["adaptive"]["checkpoint_policy"]``: the policy, its tail, its decisions."""
        p = self._ckpt_policy
        if p is None:
            return {"enabled": False}
        records, nbytes = self._log.appended() if self._log is not None else self._tail_mark
        records += self._tail_at_open - self._tail_mark[0]
        nbytes += self._tail_bytes_at_open - self._tail_mark[1]
        return {"enabled": True, "max_replay_seconds": p.max_replay_seconds, "max_tail_bytes": p.max_tail_bytes,
                "tail_records": records, "tail_bytes": nbytes, "estimated_replay_s": p.estimate(records, nbytes),
                **self._policy}

    def _write_checkpoint(self, directory: str, block: bool, prune: bool = False, ready=None):
        """Copy the state to host memory and hand it to the checkpoint writer; wait for it
        unless ``block=False``. Under the lock.

        Every checkpoint, blocking or not, is written by the one writer thread, one after
        another: orbax's checkpointers are not safe to run side by side in one process (two
        at once failed with ``File exists`` on orbax's temporary directory, or hung).
        ``ready`` (background only): a ``threading.Event`` the writer waits for before it
        touches ``directory`` (orbax creates an item's directory after handing it over)."""
        if ready is not None and self._dist is not None:
            raise InvalidArgumentError(
                "an orbax CheckpointManager save (MMSBSave) of a state over several processes is not "
                "supported; checkpoint it with mmsb.checkpoint (orbax's multi-process save)")
        self._flush_log()
        # where the log goes on from here: a reopen from this checkpoint reads the log from there
        resume = self._log.resume_point() if self._log is not None and self._writes_files else None
        if self._ckpt_policy is not None and self._log is not None:
            self._tail_mark, self._tail_at_open, self._tail_bytes_at_open = self._log.appended(), 0, 0  # a new tail
        ids = self.page_ids()
        # orbax refuses zero-size arrays: empty groups are left out (and read back as empty)
        tree = {"epoch": np.array([self._epoch], np.int64)}
        if self._pools:
            tree["pools"] = {f"pool_{p.index}": self._checkpoint_rows(p) for p in self._pools}
        if ids.size:
            tree["page_table"] = {
                "id": ids,
                "pool": self._table.pool[ids],
                "slot": self._canonical_slots(ids),
                "epoch": self._table.epoch[ids],
            }
        deps = self.dependencies(insertion_order=True)  # restore re-adds them in this order
        tree.update(self._edge_arrays(deps))
        manifest = {
            "epoch": self._epoch,
            "next_page_id": self._table.next_id,
            "semiring": self.semiring.name,
            "pools": [
                {
                    "index": p.index,
                    "shape": list(p.shape),
                    "dtype": p.dtype.name,
                    "location": p.location,
                    "high_water": p.high_water,
                }
                for p in self._pools
            ],
            "edge_types": sorted({e[3] for e in deps}),
            "dependencies": len(deps),
        }
        derived = self.derived()
        if derived:
            manifest["derived"] = [[c, name, list(ps)] for c, name, ps in derived]
        self._checkpoint_trees(manifest, tree)
        self._counters["checkpoints"] += 1
        manifest["counters"] = {k: self._counters[k] for k in STATE_COUNTERS}  # they survive reopen
        if prune:  # a checkpoint of the state's own directory: a reopen replays only what follows
            self._mark_tail()
        if self._ckpt_pool is None:
            self._ckpt_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsb-checkpoint")
        if self._dist is None:
            job = save_checkpoint if ready is None else functools.partial(_once_set, ready, save_checkpoint)
            future = self._ckpt_pool.submit(job, directory, manifest, tree, resume)
        else:  # orbax's multi-process save: each process writes its shards
            future = _dist_checkpoint.submit(self, directory, manifest, tree)
        if block:
            out = future.result()  # raises its SerializationError; the writer never takes the lock
            if prune:
                self._prune_checkpoints()
            return out
        self._ckpt_pending.append((directory, self._epoch, future, prune))
        if prune and self.keep_checkpoints is not None:
            future.add_done_callback(self._prune_when_written)
        return future

    def _prune_when_written(self, future) -> None:
        """A background checkpoint is complete: keep ``keep_checkpoints`` of them now, not only
        at the next operation, if the state's lock is free (else that operation does it)."""
        if future.cancelled() or future.exception() is not None or self._closed:
            return  # (a failure is raised by the next operation)
        if self._lock.try_acquire():
            try:
                if not self._closed:
                    self._prune_checkpoints()
            finally:
                self._lock.__exit__(None, None, None)

    def _canonical_slots(self, ids):
        """The canonical slots of pages ``ids`` (their rows, unless a pool was re-laid out):
        a checkpoint does not depend on where pages sit (:meth:`optimize_layout`)."""
        slots = self._table.slot[ids].copy()
        pools = self._table.pool[ids]
        for pool in self._pools:
            if pool.relaid:
                sel = pools == pool.index
                slots[sel] = pool.canonical(slots[sel])
        return slots

    @staticmethod
    def _checkpoint_rows(pool):
        """What a checkpoint saves of a pool: its first ``max(high_water, 1)`` rows, copied to
        the host now; for a pool spread over several processes, a device copy of them (padded
        to whole shards) that orbax writes shard by shard."""
        if pool.array.is_fully_addressable:
            return pool.canonical_rows()
        return _dist_checkpoint.pool_rows(pool)

    def _prune_checkpoints(self) -> None:
        """Keep only the newest ``keep_checkpoints`` checkpoints of this state (on the caller's
        thread, under the lock: never while the writer thread writes one)."""
        if self.keep_checkpoints is not None and not self._snapshot and self._writes_files:
            prune_checkpoints(self.path, self.keep_checkpoints)

    def _raise_failed_checkpoint(self) -> None:
        """Forget finished background checkpoints; raise (once) if any of them failed."""
        with self._lock:
            running, failed, finished = [], [], False
            for entry in self._ckpt_pending:  # (directory, epoch, future, prune)
                future = entry[2]
                if not future.done():
                    running.append(entry)
                elif future.exception() is not None:
                    failed.append(future.exception())
                else:
                    finished = finished or entry[3]
            self._ckpt_pending = running
            if finished:
                self._prune_checkpoints()
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise SerializationError(f"a background checkpoint failed: {failed[0]}{more}") from failed[0]

    def wait_for_checkpoints(self) -> None:
        """Wait for background checkpoints; raise if one failed."""
        with self._lock:
            pending = [f for _, _, f, _ in self._ckpt_pending]
        for f in pending:
            f.exception()  # waits
        self._raise_failed_checkpoint()

    def _restore_checkpoint(self, directory: str) -> None:
        """Load a checkpoint into this (empty) state: all of it, or (on any failure) nothing.

        Raises:
          SerializationError: the checkpoint is damaged, edited or inconsistent (see
            :func:`~mmsb_jax.shell._restore.check_checkpoint`), or does not fit in memory.
        """
        manifest = read_manifest(directory)
        arrays = load_arrays(directory) if self._dist is None else _dist_checkpoint.load(self, directory, manifest)
        checked = check_checkpoint(directory, manifest, arrays, self.semiring.name)
        trees = check_checkpoint_trees(directory, manifest, arrays, checked)
        try:
            self._install(checked)
            self._install_trees(trees)
        except DeriveFunctionError:  # the caller's to fix: not a damaged checkpoint
            self._init_content()
            raise
        except (MMSBError, ValueError, TypeError, KeyError, IndexError) as e:
            self._init_content()  # back to empty: the caller may try another checkpoint
            raise SerializationError(f"checkpoint {directory!r} cannot be restored: {e}") from e

    def _install(self, ck) -> None:
        for p in ck.pools:
            pool, _ = self._resolve_spec(None, p.shape, p.dtype, p.location)
            if pool.index != p.index:  # e.g. two descriptions of one (shape, dtype, location)
                raise SerializationError(f"pool {p.index} repeats the spec of pool {pool.index}")
        self._table.ensure(ck.next_page_id)
        self._table.next_id = ck.next_page_id
        self._table.pool[ck.ids] = ck.pool
        self._table.slot[ck.ids] = ck.slot
        self._table.epoch[ck.ids] = ck.page_epoch
        for p, pool in zip(ck.pools, self._pools):
            pool.restore(p.array, p.high_water, ck.slot[ck.pool == p.index])
        self._epoch = ck.epoch
        self._ckpt_counters = (ck.epoch, ck.counters)  # the base replay counts the tail onto
        log, self._log = self._log, None
        try:
            i = 0
            while i < len(ck.edges):  # in the order propagation sums them, a run of one type at a time
                j = i
                while j < len(ck.edges) and ck.edges[j][3] == ck.edges[i][3]:
                    j += 1
                run = ck.edges[i:j]
                self._add_edges(np.array([e[0] for e in run], np.int64), np.array([e[1] for e in run], np.int64),
                                np.array([np.nan if e[2] is None else e[2] for e in run], np.float64), run[0][3])
                i = j
            for c, name, parents in ck.derived:
                fn = self._derive_fns.get(name)
                if fn is None:
                    raise DeriveFunctionError(name, f"page {c} is derived by the function logged as {name!r}, which "
                                                    f"was not given: pass mmsb_open(..., derive={{{name!r}: fn}})")
                self.derive(c, fn, list(parents), name=name)
            self._epoch = ck.epoch  # restoring is not a new operation
        finally:
            self._log = log

    @staticmethod
    def _edge_arrays(deps) -> dict:
        types = sorted({e[3] for e in deps})
        return {
            "graph": {
                "parent": np.array([e[0] for e in deps], np.int64),
                "child": np.array([e[1] for e in deps], np.int64),
                "weight": np.array([np.nan if e[2] is None else e[2] for e in deps], np.float64),
                "type": np.array([types.index(e[3]) for e in deps], np.int32),
            }
        } if deps else {}
