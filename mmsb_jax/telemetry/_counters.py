"""The state's counters (pages created, updates, ...) across reopen.

They describe the state, not the process, so they survive :func:`~mmsb_jax.mmsb_stop` and
:func:`~mmsb_jax.mmsb_open`: a checkpoint's manifest carries them (field ``counters``,
checked at restore), the telemetry snapshot written at close carries them with its epoch, and
the log records replayed after the newer of the two are counted again here. Two counts the
log cannot tell apart: a no-op write logs nothing (``noop_updates`` only comes from a
checkpoint or snapshot), and after a crash an unbatched DENSE record counts as an update
(``update_page`` and ``route_delta`` of a dense delta log the same record).

Imports ``log`` (the record types) and nothing above the telemetry package.
"""

from __future__ import annotations

from .._checks import is_int
from ..log._records import Accumulate, CreatePages, DeletePages, Dense, Sparse, SparseBatch

#: The counters of ``get_stats`` that describe the state (all survive reopen).
STATE_COUNTERS = ("pages_created", "pages_deleted", "updates", "noop_updates", "deltas_routed", "batches",
                  "checkpoints")


def zero_counters() -> dict:
    return dict.fromkeys(STATE_COUNTERS, 0)


def valid_counters(obj) -> bool:
    """Whether ``obj`` is a dict of every state counter to a non-negative int (and nothing else)."""
    return (isinstance(obj, dict) and sorted(obj) == sorted(STATE_COUNTERS)
            and all(is_int(v) and v >= 0 for v in obj.values()))


def count_records(records, after_epoch: int = 0) -> dict:
    """The counters the log records with ``epoch > after_epoch`` add (records in log order).

    Example:
      >>> from mmsb_jax.log._records import CreatePages, Sparse
      >>> import numpy as np
      >>> recs = [CreatePages(epoch=1, first_page_id=0, count=3, shape=(2,), dtype="float32", location="cpu"),
      ...         Sparse(epoch=2, page_id=0, indices=np.zeros(1, np.int32), values=np.ones(1, np.float32))]
      >>> c = count_records(recs)
      >>> c["pages_created"], c["deltas_routed"], c["updates"]
      (3, 1, 0)
      >>> count_records(recs, after_epoch=1)["pages_created"]
      0
    """
    c = zero_counters()
    start = len(records)
    while start > 0 and records[start - 1].epoch > after_epoch:  # records ascend by epoch
        start -= 1
    batch_epochs = set()
    for i in range(start, len(records)):
        rec = records[i]
        t = type(rec)
        if t is SparseBatch:
            c["deltas_routed"] += len(rec.page_ids)
            batch_epochs.add(rec.epoch)
        elif t is Dense and not rec.batched:
            c["updates"] += 1
        elif t is Dense or t is Sparse or t is Accumulate:
            c["deltas_routed"] += 1
            if rec.batched:
                batch_epochs.add(rec.epoch)
        elif t is CreatePages:
            c["pages_created"] += rec.count
        elif t is DeletePages:
            c["pages_deleted"] += len(rec.page_ids)
    c["batches"] = len(batch_epochs)
    return c


def replayed_counters(records, *, checkpoint, snapshot, end_epoch: int) -> dict:
    """The counters of a state rebuilt to ``end_epoch`` from ``records`` (those after its
    checkpoint).

    Args:
      checkpoint: ``(epoch, counters or None)`` of the restored checkpoint (``(0, None)``: none).
      snapshot: the telemetry snapshot dict found in the directory, or ``None``; used when it
        describes an epoch between the checkpoint's and ``end_epoch``.
    """
    base_epoch, base = checkpoint
    if (snapshot is not None and valid_counters(snapshot.get("counters"))
            and base_epoch <= snapshot["epoch"] <= end_epoch):
        base_epoch, base = snapshot["epoch"], snapshot["counters"]
    out = dict(base) if base is not None else zero_counters()
    for k, v in count_records(records, base_epoch).items():
        out[k] += v
    return out
