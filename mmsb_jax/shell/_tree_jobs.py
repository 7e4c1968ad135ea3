"""What the tree journal's writer runs: a job per ``save_tree`` call or drained ring, each
step's leaves compared with their previous values, encoded into one log batch per step, and
the pages' writes held back until an operation needs them (:mod:`._trees` says why)."""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np

from .._errors import SerializationError
from ._tree_writer import BackgroundWriter
from ._tree_writes import PageWrites, log_write, plan_leaf

_PENDING_PARTIAL_BYTES = 256 << 20  # partial-row writes held back before the pages take them


class _Job(NamedTuple):
    tree: object  # the TreeInfo
    host: list  # per leaf: (>= n, *shape) values of the n steps first (host arrays, or a ring's device buffers)
    epochs: list
    steps: list
    first: object  # the log batch holding the CREATE_PAGES + TREE_DEF of a new tree, or None
    source: str
    pooled: list  # host arrays to give back to the state's HostBuffers once written
    ring: object = None  # (spare key, (buffers, steps)) of a drained ring, a spare once read


def _weak_runner(state):
    ref = weakref.ref(state)

    def run(jobs):
        s = ref()
        if s is not None:
            s._run_tree_jobs(jobs)

    return run


class TreeJobs:
    """Mixin of :class:`MMSBState` (through :class:`._trees.TreeJournal`): submitting tree
    jobs to the background writer, running them, applying their page writes."""

    def _tree_submit(self, job: _Job, nbytes: int) -> None:
        if self.fsync == "always" or self._log is None:  # durable before returning
            try:
                self._run_tree_jobs([job])
            except BaseException as e:
                self._tree_failure = e
                raise
            return
        w = self._lock.writer
        if w is None:
            w = self._lock.writer = BackgroundWriter(_weak_runner(self))
        w.submit(job, nbytes)

    def _run_tree_jobs(self, jobs: list) -> None:
        """Diff, encode and log the steps of ``jobs`` (one append); the pages take them later
        (:meth:`_apply_tree_writes`)."""
        log = self._log
        writes = PageWrites()
        batches: list = []
        for job in jobs:
            done = len(batches)
            try:
                self._plan_job(job, log, writes, batches)
            except BaseException:
                if log is not None:  # the steps before this one stay logged: they were acknowledged
                    log.commit_batches(batches[:done])
                raise
        if log is not None:
            log.commit_batches(batches)  # written out: the memory the records point into may be reused
        with self._lock:
            # a whole-page write keeps no reference to a job's (recycled) memory: it reads the
            # writer's copy, which holds the page's latest value by the time pages are written
            writes.rebase_whole({int(pid): m.reshape(-1) for job in jobs
                                 for pid, m in zip(job.tree.page_ids.tolist(), job.tree.mirror)})
            self._tree_pending.merge(writes)
            if self._tree_pending.partial_bytes > _PENDING_PARTIAL_BYTES:
                self._apply_tree_writes()
        del writes, batches  # the last views of the jobs' memory
        for job in jobs:
            self._tree_buffers.give(job.pooled)
            if job.ring is not None:  # read through: a spare for a later drain
                key, parts = job.ring
                with self._lock:
                    self._tree_spares.setdefault(key, []).append(parts)

    def _plan_job(self, job: _Job, log, writes: PageWrites, batches: list) -> None:
        """One job's steps: each leaf compared with its previous value, the changes added to
        ``writes`` and to one log batch per step; the writer's copies move to the last step."""
        t = job.tree
        host = [np.asarray(h) for h in job.host]  # a ring's buffers: views on the CPU, copies elsewhere
        prev = list(self._tree_prev(t))
        ids = t.page_ids.tolist()
        for k, (epoch, step) in enumerate(zip(job.epochs, job.steps)):
            b = job.first if k == 0 and job.first is not None else (
                log.batch(epoch, source=job.source, zero_copy=True) if log is not None else None)
            for i, pid in enumerate(ids):
                new = host[i][k, ...]
                w = plan_leaf(prev[i], new, self._tree_buffers)
                if w is not None:
                    if b is not None:
                        log_write(b, pid, w)
                    writes.add(pid, epoch, w)
                prev[i] = new
            if b is not None:
                b.log_tree_step(t.name, step)
                batches.append(b)
        n = len(job.epochs)
        for m, h in zip(t.mirror, host):
            np.copyto(m, h[n - 1, ...])
        t.mirror_epoch = job.epochs[-1]

    def _apply_tree_writes(self) -> None:
        """Write the journaled steps not yet in the pages (the state's lock calls this before any
        other operation). Deferred, because a device write queued behind a running training
        step would hold up the background writer."""
        pending = self._tree_pending
        if pending:
            with self._lock:
                kernel = self._sparse_kernel()  # may refuse (a bad MMSB_KERNELS): the writes stay pending
                pending.apply(self, kernel=kernel)

    def _raise_journal_failure(self) -> None:
        """Raise (every time) if background tree journaling failed: the state missed a write."""
        w = self._lock.writer
        failure = self._tree_failure or (w.failure if w is not None else None)
        if failure is not None:
            raise SerializationError(
                f"tree journaling of the state at {self.path!r} failed in the background ({failure!r}); "
                "the state is no longer consistent with its log: reopen it with mmsb_open"
            ) from failure

    def _close_trees(self) -> None:
        w, self._lock.writer = self._lock.writer, None
        if w is not None:
            w.close()
            if w.failure is not None and self._tree_failure is None:
                self._tree_failure = w.failure
