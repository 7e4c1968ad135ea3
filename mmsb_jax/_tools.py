"""Offline tools over a state directory: inspect and verify (used by ``mmsb inspect/verify``)."""

from __future__ import annotations

import os

from ._errors import MMSBError
from .log import Kind
from .shell._replay import rebuild
from .log._directory import list_checkpoints, require_state
from .log import first_logged_epoch, list_segments, read_records


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def inspect_state(path) -> dict:
    """What a state directory holds: epochs, records per kind, segments, checkpoints, bytes.

    Reads the log in ``skip_corrupt`` mode, so it reports on damaged logs too.
    """
    path = os.path.abspath(os.fspath(path))
    require_state(path)
    log_dir = os.path.join(path, "log")
    res = read_records(log_dir, "skip_corrupt")
    recs = res.records
    created = sum(r.count for r in recs if r.kind == Kind.CREATE_PAGES)
    deleted = sum(len(r.page_ids) for r in recs if r.kind == Kind.DELETE_PAGES)
    return {
        "path": path,
        "first_epoch": recs[0].epoch if recs else None,
        "last_epoch": recs[-1].epoch if recs else None,
        "pages_created": created,
        "pages_deleted": deleted,
        "records_by_kind": {Kind(k).name: v for k, v in sorted(res.report.kind_counts.items())},
        "segments": [{"file": os.path.basename(str(p)), "bytes": os.path.getsize(p)} for _, p in list_segments(log_dir)],
        "checkpoints": [{"dir": os.path.relpath(d, path), "epoch": e} for d, e in list_checkpoints(path)],
        "skipped_ranges": [vars(s) for s in res.report.skipped],
        "log_bytes": _dir_bytes(log_dir),
        "total_bytes": _dir_bytes(path),
    }


def verify_state(path, progress=None) -> dict:
    """Check every record's CRC and that each checkpoint equals a replay of the log to its epoch.

    Each checkpoint is compared with the previous one (or the empty state) plus the log records
    between them. A checkpoint whose comparison needs records that compaction removed cannot be
    re-derived: it is listed with ``matches_replay=None`` and a ``note``, and is not a fault.

    Returns ``{"ok": bool, "faults": [str, ...], "records": n, "checkpoints": [...]}``:
    ``records`` counts the records whose CRC was checked (those before the first damage, if
    any); each checkpoint is ``{"dir", "epoch", "matches_replay": bool | None}``, plus
    ``"note"`` when it was skipped. ``progress(i, total, what)`` is called as checkpoints are
    verified.
    """
    from .shell._state import MMSBState

    path = os.path.abspath(os.fspath(path))
    require_state(path)
    log_dir = os.path.join(path, "log")
    faults: list[str] = []
    try:
        n_records = len(read_records(log_dir, "absolute").records)
    except MMSBError as e:
        faults.append(f"log: {e}")
        try:  # the intact records before the damage were checked
            n_records = len(read_records(log_dir, "point_in_time").records)
        except MMSBError:
            n_records = 0
    first = first_logged_epoch(log_dir)  # compaction dropped every epoch before this one
    checks = []
    cks = list_checkpoints(path)
    for i, (d, epoch) in enumerate(cks):
        if progress:
            progress(i, len(cks), d)
        if epoch < 0:
            faults.append(f"checkpoint {d}: unreadable manifest")
            continue
        # Compare against the log replayed from the previous checkpoint (or from the start).
        older = [(od, oe) for od, oe in cks if 0 <= oe < epoch]
        base, base_epoch = max(older, key=lambda t: t[1]) if older else (None, 0)
        check = {"dir": os.path.relpath(d, path), "epoch": epoch, "matches_replay": None}
        if first is not None and first > base_epoch + 1:  # epochs base_epoch+1 .. first-1 are gone
            check["note"] = f"skipped: log compacted before epoch {first}"
            checks.append(check)
            continue
        try:
            from_ckpt = MMSBState(path, _snapshot=True)
            from_ckpt._restore_checkpoint(d)
            from_log = MMSBState(path, _snapshot=True)
            rebuild(from_log, path, end_epoch=epoch, checkpoint=base)
            check["matches_replay"] = from_ckpt.digest() == from_log.digest()
        except MMSBError as e:
            faults.append(f"checkpoint {d}: {e}")
            continue
        checks.append(check)
        if not check["matches_replay"]:
            faults.append(f"checkpoint {d} (epoch {epoch}) differs from a replay of the log to that epoch")
    if progress:
        progress(len(cks), len(cks), "done")
    return {"ok": not faults, "faults": faults, "records": n_records, "checkpoints": checks}
