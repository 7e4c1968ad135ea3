"""The background flusher thread of a ``fsync="batch"`` log writer."""

from __future__ import annotations

import threading
import time


class FlushSignal:
    """State the flusher thread waits on (guarded by the TLog's lock); never refers to the TLog,
    so the thread can wait without keeping it alive."""

    __slots__ = ("first_unsynced", "stop")

    def __init__(self):
        self.first_unsynced: float | None = None  # monotonic time of the oldest buffered append
        self.stop = False


def flusher(ref, cond: threading.Condition, sig: FlushSignal, interval: float) -> None:
    """Background thread of a ``fsync="batch"`` TLog (holds only a weakref to it).

    Syncs the buffer once its oldest record is ``interval`` s old when no append came along to
    do it inline, so an acknowledged append is durable within ~``interval`` even if the
    appends stop. (Size-triggered syncs run inline in the appending thread: handing them to
    this thread costs a GIL hand-off per flush and was measured slower.) The fdatasync runs
    outside the writer's I/O lock (see :meth:`TLog._background_sync`).
    """
    while True:
        with cond:
            while not sig.stop:
                # Poll every interval rather than being notified by each append: a notify per
                # append costs the appending thread a GIL hand-off (~10 us per update).
                wait = interval
                if sig.first_unsynced is not None:
                    wait = sig.first_unsynced + interval - time.monotonic()
                    if wait <= 0:
                        break
                cond.wait(min(wait, interval))
            if sig.stop:
                return
        log = ref()  # taken and dropped outside the lock: dropping the last ref runs __del__
        if log is None:
            return
        try:
            log._background_sync()
        except Exception:  # noqa: BLE001
            return  # recorded in log._failed; raised by the next append/flush
        finally:
            del log
