"""The replay tail: how much log a reopen replays after the newest checkpoint.

Measured as bytes and records from a log position (where the first record after the
checkpoint starts) to the end of the log. Imports ``log`` and nothing above the telemetry
package.
"""

from __future__ import annotations

import os

from ..log import list_segments, read_records
from ..log._report import LogPosition
from ..log._segments import walk_segment as _walk_segment


def tail_bytes(sizes: dict, mark) -> int:
    """Bytes from ``mark`` (a :class:`~mmsb_jax.log.LogPosition`, or ``None``: nothing) to the
    end of the log whose segment index -> size is ``sizes``.

    Example:
      >>> from mmsb_jax.log._report import LogPosition
      >>> tail_bytes({0: 100, 1: 50, 2: 30}, LogPosition(1, 20))
      60
    """
    if mark is None:
        return 0
    return sum(n for i, n in sizes.items() if i > mark.segment) + max(0, sizes.get(mark.segment, 0) - mark.offset)


def first_position(records, log_end) -> LogPosition:
    """Where the first of ``records`` (read from disk) starts; ``log_end`` when there are none."""
    if records and records[0].segment >= 0:
        return LogPosition(records[0].segment, records[0].offset)
    return log_end


def segment_sizes(log_dir: str) -> dict:
    """Segment index -> bytes of the segment files in ``log_dir`` (empty without a log)."""
    if not os.path.isdir(log_dir):
        return {}
    return {i: os.path.getsize(p) for i, p in list_segments(log_dir)}


def files_tail(path: str, checkpoint_epoch: int) -> dict:
    """``records`` and ``bytes`` of the log of the state at ``path`` after ``checkpoint_epoch``,
    from the segment files (a header walk: no CRC checks, no decoding)."""
    log_dir = os.path.join(path, "log")
    records = bytes_ = 0
    if not os.path.isdir(log_dir):
        return {"records": 0, "bytes": 0}
    for i, seg in list_segments(log_dir):
        info = _walk_segment(i, seg)
        if info.last_epoch is None or info.last_epoch <= checkpoint_epoch:
            continue
        if info.first_epoch is not None and info.first_epoch > checkpoint_epoch:
            records += info.records
            bytes_ += info.bytes
            continue
        # the segment holding the boundary: record by record
        res = read_records(log_dir, "skip_corrupt", checkpoint_epoch + 1, info.last_epoch)
        inside = [r for r in res.records if r.segment == i]
        records += len(inside)
        if inside:
            bytes_ += info.bytes - inside[0].offset
    return {"records": records, "bytes": bytes_}
