"""Batches of the log: records of one epoch written atomically (:class:`TLogBatch`), and the
epoch argument check the writer and batches share."""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any, Self

from .._errors import InvalidArgumentError
from ._records import Commit, LogRecord
from ._encode import (
    FLAG_BATCH,
    U64_MAX,
    body_accumulate,
    body_add_dep,
    body_add_deps,
    body_commit,
    body_create_pages,
    body_delete_pages,
    body_dense,
    body_dense_packed,
    body_derive,
    body_remove_dep,
    body_remove_deps,
    body_rows,
    body_sparse,
    body_sparse_batch,
    body_tree_def,
    body_tree_step,
)
from ._framing import frame, frame_chunks

if TYPE_CHECKING:
    from ._writer import TLog


def check_epoch(epoch: Any) -> int:
    try:
        e = int(epoch)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"epoch={epoch!r} is not an integer") from None
    if e != epoch or not 0 <= e <= U64_MAX:
        raise InvalidArgumentError(f"epoch={epoch!r} is not an integer in [0, 2**64)")
    return e


class TLogBatch:
    """Records of one epoch, written atomically (flagged BATCH, closed by a COMMIT record).

    Same ``log_*`` methods as :class:`TLog`, without the ``epoch`` argument. Arrays are
    encoded (copied) at call time. ``commit()`` (or leaving the ``with`` normally) writes;
    ``abort()`` (or an exception in the ``with``) discards. An empty batch writes nothing.
    """

    def __init__(self, log: TLog, epoch: int, source: str, zero_copy: bool = False):
        self._log = log
        self.epoch = epoch
        self.source = source
        self._zero_copy = zero_copy
        self._recs: list = []  # framed chunks (a large record is several)
        self._kinds: list = []
        self._nbytes = 0
        self._done = False

    def _add(self, kind, parts, source, timestamp: int | None = None) -> None:
        if self._done:
            raise InvalidArgumentError("this batch was already committed or aborted")
        ts = timestamp or time.time_ns()
        src = self.source if source is None else source
        if self._zero_copy:
            chunks, nbytes = frame_chunks(self.epoch, kind, FLAG_BATCH, ts, src, parts)
            self._recs.extend(chunks)
        else:
            rec = frame(self.epoch, kind, FLAG_BATCH, ts, src, parts)
            nbytes = len(rec)
            self._recs.append(rec)
        self._kinds.append(kind)
        self._nbytes += nbytes

    @property
    def nbytes(self) -> int:
        """Bytes of the records added so far (without the closing COMMIT)."""
        return self._nbytes

    def append_record(self, record: LogRecord) -> None:
        if isinstance(record, Commit) or not isinstance(record, LogRecord):
            raise InvalidArgumentError(f"cannot append {type(record).__name__} to a batch")
        self._add(*record._body(), record.source or None, record.timestamp)

    def __len__(self) -> int:
        return len(self._kinds)

    def commit(self) -> None:
        group = self._seal()
        if group is not None:
            self._log._push_groups((group,))

    def _seal(self):
        """Close the batch: its ``(epoch, records + COMMIT, nbytes, kinds)``, or None if empty."""
        if self._done:
            raise InvalidArgumentError("this batch was already committed or aborted")
        self._done = True
        if not self._kinds:
            return None
        kind, parts = body_commit(len(self._kinds))
        end = frame(self.epoch, kind, FLAG_BATCH, time.time_ns(), self.source, parts)
        recs, self._recs = self._recs + [end], []
        return self.epoch, recs, self._nbytes + len(end), self._kinds + [kind]

    def abort(self) -> None:
        self._done = True
        self._recs, self._kinds = [], []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._done:
                self.commit()
        else:
            self.abort()


#: Each ``TLog.log_<kind>`` method and the body encoder it frames, in the same argument order:
#: :class:`TLogBatch` gets every one of them from this table (without the ``epoch``), so the
#: two classes cannot drift apart.
RECORD_BODIES = {
    "log_create_pages": body_create_pages,
    "log_delete_pages": body_delete_pages,
    "log_dense": body_dense,
    "log_dense_packed": body_dense_packed,
    "log_sparse": body_sparse,
    "log_sparse_batch": body_sparse_batch,
    "log_accumulate": body_accumulate,
    "log_add_dep": body_add_dep,
    "log_remove_dep": body_remove_dep,
    "log_add_deps": body_add_deps,
    "log_remove_deps": body_remove_deps,
    "log_derive": body_derive,
    "log_rows": body_rows,
    "log_tree_def": body_tree_def,
    "log_tree_step": body_tree_step,
}


def _batch_method(tlog, name: str, body):
    def method(self, *args, source=None, **kwargs):
        self._add(*body(*args, **kwargs), source)

    single = getattr(tlog, name)
    sig = inspect.signature(single)
    method.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "epoch"])
    method.__name__, method.__qualname__ = name, f"TLogBatch.{name}"
    method.__doc__ = f"{single.__doc__.splitlines()[0]} (into the batch's epoch)"
    return method


def install_log_methods(tlog) -> None:
    """Give :class:`TLogBatch` every ``log_*`` method of the writer class ``tlog`` (signature
    and first docstring line from it, without ``epoch``)."""
    for name, body in RECORD_BODIES.items():
        setattr(TLogBatch, name, _batch_method(tlog, name, body))
