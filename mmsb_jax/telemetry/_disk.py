"""What a state's files say, for ``get_stats`` and ``mmsb stats PATH``: checkpoints (count,
newest epoch, size, age) and the log (bytes, records, segments). Reads headers and manifests
only. Imports ``log`` and nothing above the telemetry package.
"""

from __future__ import annotations

import os
import time

from ..log import list_segments
from ..log._checkpoint import MANIFEST
from ..log._directory import list_checkpoints
from ..log._segments import walk_segment as _walk_segment


def dir_bytes(directory: str) -> int:
    """Bytes of every file under ``directory``."""
    total = 0
    for root, _, files in os.walk(directory):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:  # removed meanwhile (a checkpoint being pruned)
                pass
    return total


def checkpoint_figures(path: str, now: float | None = None) -> dict:
    """``count``, ``epochs`` and the newest checkpoint's ``newest_dir``, ``newest_epoch``,
    ``newest_bytes`` and ``newest_age_seconds`` (from its manifest's mtime) of the state at
    ``path``; unreadable checkpoints are not counted.

    Example:
      >>> import tempfile
      >>> checkpoint_figures(tempfile.mkdtemp())["count"]
      0
    """
    found = [(d, e) for d, e in list_checkpoints(path) if e >= 0] if os.path.isdir(path) else []
    out = {"count": len(found), "epochs": sorted(e for _, e in found), "newest_dir": None, "newest_epoch": None,
           "newest_bytes": None, "newest_age_seconds": None, "newest_written_at": None}
    if found:
        d, e = max(found, key=lambda t: t[1])
        try:
            written = os.path.getmtime(os.path.join(d, MANIFEST))
        except OSError:
            written = None
        out.update(newest_dir=d, newest_epoch=e, newest_bytes=dir_bytes(d), newest_written_at=written,
                   newest_age_seconds=None if written is None else max(0.0, (now or time.time()) - written))
    return out


def log_figures(path: str) -> dict:
    """``segments``, ``bytes``, ``records``, ``first_epoch``, ``last_epoch`` of the log at
    ``<path>/log`` from the segment headers (no CRC checks)."""
    log_dir = os.path.join(path, "log")
    segs = [_walk_segment(i, p) for i, p in list_segments(log_dir)] if os.path.isdir(log_dir) else []
    return {"segments": len(segs), "bytes": sum(s.bytes for s in segs), "records": sum(s.records for s in segs),
            "first_epoch": segs[0].first_epoch if segs else None,
            "last_epoch": next((s.last_epoch for s in reversed(segs) if s.last_epoch is not None), None)}
