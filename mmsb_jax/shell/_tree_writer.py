"""The background tree-journal writer and the state lock that keeps every reader consistent with it.

``save_tree`` and ``drain_ring`` copy what they journal to host memory and return; the
change detection, encoding and log writes run on one background thread, which takes every
job queued so far in one go (one log append, so one fsync under ``fsync="batch"``), then
applies the pages under the state's lock. The state's lock (:class:`JournalLock`) lets any
other operation in only once that thread is idle, so nothing ever sees a step that is
committed (its epoch handed out) but not yet written; tree journaling itself only waits for
queue space, which bounds the host memory held by queued steps. A failure on the thread is
kept and raised by the state's next operation; it is never swallowed.
"""

from __future__ import annotations

import atexit
import threading
import weakref

import numpy as np

_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _drain_all() -> None:  # pragma: no cover - interpreter exit: let queued steps reach the log
    for writer in list(_LIVE):
        try:
            writer.close()
        except Exception:  # noqa: BLE001, S110 - best effort at exit
            pass


class BackgroundWriter:
    """One thread running queued jobs in order; ``run(jobs)`` gets every job queued so far.

    Args:
      run: called on the thread with a list of jobs (must not keep the writer alive).
      max_bytes: queued jobs may hold at most this many bytes (one job may exceed it alone).
    """

    def __init__(self, run, max_bytes: int = 512 << 20):
        self._run = run
        self.max_bytes = int(max_bytes)
        self._cond = threading.Condition(threading.Lock())
        self._queue: list = []  # (job, nbytes)
        self._bytes = 0  # queued + running
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        _LIVE.add(self)

    @property
    def worker_ident(self) -> int | None:
        t = self._thread
        return None if t is None else t.ident

    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._busy

    def wait_idle(self) -> None:
        """Wait until every queued job ran (or the writer failed)."""
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()

    def wait_space(self, nbytes: int) -> None:
        """Wait until a job of ``nbytes`` fits in the queue (call without the state lock)."""
        with self._cond:
            while self._bytes and self._bytes + nbytes > self.max_bytes and self.failure is None:
                self._cond.wait()

    def submit(self, job, nbytes: int) -> None:
        with self._cond:
            if self.failure is not None:
                raise self.failure
            self._queue.append((job, int(nbytes)))
            self._bytes += int(nbytes)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mmsb-tree-journal", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                items, self._queue = self._queue, []
                self._busy = True
            try:
                self._run([job for job, _ in items])
            except BaseException as e:  # noqa: BLE001 - kept and raised by the next operation
                with self._cond:
                    self.failure = e
                    self._bytes -= sum(n for _, n in self._queue)
                    self._queue = []  # later jobs build on this one: they cannot be applied
            finally:
                with self._cond:
                    self._busy = False
                    self._bytes -= sum(n for _, n in items)
                    self._cond.notify_all()

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        _LIVE.discard(self)


class JournalLock:
    """The reentrant lock of an :class:`MMSBState`.

    ``with lock:`` (every state operation) waits, at its outermost acquisition, until the
    background writer is idle, and then runs ``on_enter`` (the state applies the page writes
    the writer deferred). ``with lock.journaling(nbytes):`` (``save_tree``, ``drain_ring``)
    waits only for queue space. The writer's own thread never waits.
    """

    def __init__(self, on_enter=None):
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._count = 0
        self.writer: BackgroundWriter | None = None
        self.on_enter = on_enter

    def _enter(self, wait_idle: bool, nbytes: int = 0) -> None:
        me = threading.get_ident()
        if self._owner == me:
            self._count += 1
            return
        w = self.writer
        if w is not None and w.worker_ident == me:
            wait_idle = False
        elif w is not None and not wait_idle:
            w.wait_space(nbytes)
        while True:
            if wait_idle and w is not None:
                w.wait_idle()
            self._mutex.acquire()
            if not wait_idle or w is None or w.idle():
                break
            self._mutex.release()  # a job was queued in between: wait for it too
        self._owner, self._count = me, 1
        if wait_idle and self.on_enter is not None:
            try:
                self.on_enter()
            except BaseException:
                self.__exit__(None, None, None)
                raise

    def __enter__(self):
        self._enter(True)
        return self

    def try_acquire(self) -> bool:
        """Hold the lock now if no other thread does (no waiting, no ``on_enter``); release it
        with ``__exit__``. For work that may as well be left to the next operation."""
        me = threading.get_ident()
        if self._owner == me:
            self._count += 1
            return True
        if not self._mutex.acquire(blocking=False):
            return False
        self._owner, self._count = me, 1
        return True

    def __exit__(self, *exc) -> None:
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._mutex.release()

    def journaling(self, nbytes: int):
        """A context that holds the lock without waiting for the writer to be idle."""
        return _Journaling(self, nbytes)


class _Journaling:
    __slots__ = ("lock", "nbytes")

    def __init__(self, lock: JournalLock, nbytes: int):
        self.lock, self.nbytes = lock, nbytes

    def __enter__(self):
        self.lock._enter(False, self.nbytes)
        return self.lock

    def __exit__(self, *exc) -> None:
        self.lock.__exit__(*exc)


class HostBuffers:
    """Host arrays recycled by ``(shape, dtype)`` for the values a journal job holds.

    Fresh memory costs page faults: copying 205 MB into new arrays took ~570 ms on this
    project's CPU machine, into reused ones 30-80 ms. Jobs take buffers here and give them
    back once written; at most ``limit_bytes`` are kept.
    """

    def __init__(self, limit_bytes: int = 1 << 30):
        self.limit_bytes = int(limit_bytes)
        self._lock = threading.Lock()
        self._free: dict = {}
        self._bytes = 0

    def take(self, shape: tuple, dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            stack = self._free.get(key)
            if stack:
                arr = stack.pop()
                self._bytes -= arr.nbytes
                return arr
        return np.empty(shape, dtype)

    def give(self, arrays) -> None:
        with self._lock:
            for arr in arrays:
                if arr.base is None and self._bytes + arr.nbytes <= self.limit_bytes:
                    self._free.setdefault((arr.shape, arr.dtype.str), []).append(arr)
                    self._bytes += arr.nbytes
