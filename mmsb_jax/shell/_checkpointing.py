"""Checkpoint writing and restoring for :class:`MMSBState` (format in ``_checkpoint``)."""

from __future__ import annotations

import functools
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..log._checkpoint import is_checkpoint, load_arrays, read_manifest, save_checkpoint
from .._errors import InvalidArgumentError, SerializationError, StateClosedError


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
          SerializationError: ``directory`` already holds a checkpoint (or, with ``block=True``,
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
            directory = os.path.abspath(os.fspath(directory))
            joined = next((f for d, e, f in self._ckpt_pending if d == directory and e == self._epoch), None)
            if joined is None:
                if block and any(d == directory for d, _, _ in self._ckpt_pending):
                    raise SerializationError(
                        f"{directory!r} is being written by a background checkpoint of another epoch; "
                        "choose a new directory"
                    )
                if default and is_checkpoint(directory):  # it already holds this state
                    return directory if block else _done(directory)
                return self._write_checkpoint(directory, block)
            if not block:
                return joined
        # Wait without the lock (the writer never takes it; other threads may go on).
        error = joined.exception()
        self._raise_failed_checkpoint()  # it failed: raised here, once (not again by mmsb_stop)
        if error is not None:  # another thread reported it first: still an error here
            raise SerializationError(f"a background checkpoint failed: {error}") from error
        return joined.result()

    def _write_checkpoint(self, directory: str, block: bool, ready=None):
        """Copy the state to host memory and write it (now, or in the background). Under the lock.

        ``ready`` (background only): a ``threading.Event`` the writer waits for before it
        touches ``directory`` (orbax creates an item's directory after handing it over)."""
        self._flush_journal()
        ids = self.page_ids()
        # orbax refuses zero-size arrays: empty groups are left out (and read back as empty)
        tree = {"epoch": np.array([self._epoch], np.int64)}
        if self._pools:
            tree["pools"] = {f"pool_{p.index}": np.asarray(p.array[: max(p.high_water, 1)]) for p in self._pools}
        if ids.size:
            tree["page_table"] = {
                "id": ids,
                "pool": self._table.pool[ids],
                "slot": self._table.slot[ids],
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
        self._checkpoint_trees(manifest, tree)
        self._counters["checkpoints"] += 1
        if block:
            return save_checkpoint(directory, manifest, tree)
        if self._ckpt_pool is None:
            self._ckpt_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsb-checkpoint")
        job = save_checkpoint if ready is None else functools.partial(_once_set, ready, save_checkpoint)
        future = self._ckpt_pool.submit(job, directory, manifest, tree)
        self._ckpt_pending.append((directory, self._epoch, future))
        return future

    def _raise_failed_checkpoint(self) -> None:
        """Forget finished background checkpoints; raise (once) if any of them failed."""
        with self._lock:
            running, failed = [], []
            for entry in self._ckpt_pending:  # (directory, epoch, future)
                future = entry[2]
                if not future.done():
                    running.append(entry)
                elif future.exception() is not None:
                    failed.append(future.exception())
            self._ckpt_pending = running
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise SerializationError(f"a background checkpoint failed: {failed[0]}{more}") from failed[0]

    def wait_for_checkpoints(self) -> None:
        """Wait for background checkpoints; raise if one failed."""
        with self._lock:
            pending = [f for _, _, f in self._ckpt_pending]
        for f in pending:
            f.exception()  # waits
        self._raise_failed_checkpoint()

    def _restore_checkpoint(self, directory: str) -> None:
        """Load a checkpoint into this (empty) state."""
        manifest = read_manifest(directory)
        tree = load_arrays(directory)
        try:
            for desc in manifest["pools"]:
                pool, _ = self._resolve_spec(None, tuple(desc["shape"]), np.dtype(desc["dtype"]), desc["location"])
                if pool.index != int(desc["index"]):
                    raise SerializationError(f"pool order in {directory!r} is inconsistent")
            empty = np.zeros(0, np.int64)
            table = tree.get("page_table") or {"id": empty, "pool": empty, "slot": empty, "epoch": empty}
            ids = np.asarray(table["id"], np.int64)
            self._table.next_id = int(manifest["next_page_id"])
            self._table.ensure(self._table.next_id)
            self._table.pool[ids] = table["pool"]
            self._table.slot[ids] = table["slot"]
            self._table.epoch[ids] = table["epoch"]
            for desc, pool in zip(manifest["pools"], self._pools):
                arr = tree["pools"][f"pool_{pool.index}"]
                if tuple(arr.shape[1:]) != pool.shape or np.dtype(arr.dtype) != pool.dtype:
                    raise SerializationError(
                        f"pool_{pool.index} in {directory!r} has {arr.dtype}{arr.shape}; "
                        f"expected pages of {pool.dtype}{pool.shape}"
                    )
                used = table["slot"][table["pool"] == pool.index]
                pool.restore(arr, int(desc["high_water"]), used)
            self._epoch = int(manifest["epoch"])
            self._restore_extra(manifest, tree)
            self._restore_trees(manifest, tree)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SerializationError(f"checkpoint {directory!r} is inconsistent: {e!r}") from None

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

    def _restore_extra(self, manifest: dict, tree: dict) -> None:
        g = tree.get("graph")
        if not g:
            return
        types = manifest["edge_types"]
        log, self._log = self._log, None
        try:
            for u, v, w, t in zip(g["parent"].tolist(), g["child"].tolist(), g["weight"].tolist(), g["type"].tolist()):
                epoch = self._epoch
                self.add_dependency(u, v, weight=None if np.isnan(w) else w, edge_type=types[t])
                self._epoch = epoch  # restoring is not a new operation
        finally:
            self._log = log

