"""Offline tools over a state directory: inspect and verify (used by ``mmsb inspect/verify``)."""

from __future__ import annotations

import os

from ._errors import MMSBError
from .log import Kind
from .shell._replay import rebuild
from .log._directory import (
    last_closed_epoch,
    list_checkpoints,
    log_floor,
    require_state,
    salvaged_epochs,
    state_semiring,
)
from .shell import _inputs
from .log import list_segments, read_records
from .telemetry._disk import dir_bytes as _dir_bytes


def inspect_state(path) -> dict:
    """What a state directory holds: epochs, records per kind, segments, checkpoints, bytes.

    Reads the log in ``skip_corrupt`` mode, so it reports on damaged logs too.
    """
    path = _inputs.path(path)
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


def verify_state(path, progress=None, *, semirings=(), derive=None) -> dict:
    """Check a state directory the way opening it would, and more: every file's checksum, the
    log's epoch order, each checkpoint against a replay of the log to its epoch, and the state
    ``mmsb_open`` would build (newest checkpoint + log tail) against a full replay of the log.

    Each checkpoint is compared with the previous one (or the empty state) plus the log records
    between them. A checkpoint whose comparison needs records that compaction removed cannot be
    re-derived: it is listed with ``matches_replay=None`` and a ``note``, and is not a fault. A
    checkpoint directory without a log (``mmsb_stop(state, checkpoint_path=...)``) is checked
    on its own: its checksums and consistency.

    Returns ``{"ok": bool, "faults": [str, ...], "records": n, "checkpoints": [...],
    "notes": [str, ...]}``: ``records`` counts the records whose CRC was checked (those before
    the first damage, if any); each checkpoint is ``{"dir", "epoch", "matches_replay": bool |
    None}``, plus ``"note"`` when it was skipped. ``progress(i, total, what)`` is called as
    checkpoints are verified. ``semirings``: user-defined semirings the log names; ``derive``:
    the functions of derived pages by name (as for :func:`mmsb_jax.mmsb_open`).
    """
    from .shell._replay import resolve_semiring
    from .shell._state import MMSBState

    path = _inputs.path(path)
    require_state(path)
    log_dir = os.path.join(path, "log")
    faults: list[str] = []
    notes: list[str] = []
    try:
        semiring = resolve_semiring(state_semiring(path), semirings)
    except MMSBError as e:
        return {"ok": False, "faults": [f"settings: {e}"], "records": 0, "checkpoints": [], "notes": notes}

    def snapshot():
        return MMSBState(path, semiring=semiring, derive=derive, _snapshot=True)

    has_log = os.path.isdir(log_dir) and bool(list_segments(log_dir))
    gaps: list[tuple[int, int]] = []  # (a, b): the log holds epoch a, then b > a + 1
    try:
        records = read_records(log_dir, "absolute").records
        n_records = len(records)
        salvaged = set(salvaged_epochs(path))  # only a jump a salvage open made is not damage
        gaps = [(a, b) for a, b in _epoch_gaps(records) if b - 1 in salvaged]
        del records
    except MMSBError as e:
        faults.append(f"log: {e}")
        try:  # the intact records before the damage were checked
            n_records = len(read_records(log_dir, "point_in_time").records)
        except MMSBError:
            n_records = 0
    first = log_floor(path)  # compaction dropped every epoch before this one
    ck_dir = os.path.join(path, "checkpoints")
    if os.path.isdir(ck_dir):
        for name in sorted(os.listdir(ck_dir)):
            if not os.path.lexists(os.path.join(ck_dir, name, "manifest.json")):
                notes.append(f"checkpoints/{name} has no manifest (an interrupted checkpoint; opening removes it)")
    checks = []
    cks = list_checkpoints(path)
    for i, (d, epoch) in enumerate(cks):
        if progress:
            progress(i, len(cks), d)
        if epoch < 0:
            faults.append(f"checkpoint {d}: unreadable manifest")
            continue
        check = {"dir": os.path.relpath(d, path), "epoch": epoch, "matches_replay": None}
        try:
            from_ckpt = snapshot()
            from_ckpt._restore_checkpoint(d)
        except MMSBError as e:
            faults.append(f"checkpoint {d}: {e}")
            continue
        if not has_log and first == 1:
            check["note"] = "no log to compare with: checksums and consistency checked"
            checks.append(check)
            continue
        # Compare against the log replayed from the previous checkpoint (or from the start).
        older = [(od, oe) for od, oe in cks if 0 <= oe < epoch]
        base, base_epoch = max(older, key=lambda t: t[1]) if older else (None, 0)
        if first > base_epoch + 1:  # epochs base_epoch+1 .. first-1 are gone
            check["note"] = f"skipped: log compacted before epoch {first}"
            checks.append(check)
            continue
        gap = next(((a, b) for a, b in gaps if base_epoch <= a and b - 1 <= epoch), None)
        if gap is not None:  # a salvage open kept epochs the log lost in this checkpoint
            check["note"] = (f"skipped: the log has no epochs {gap[0] + 1}..{gap[1] - 1} (a salvage open "
                             "kept what it recovered of them in this checkpoint)")
            checks.append(check)
            continue
        try:
            from_log = snapshot()
            rebuild(from_log, path, end_epoch=epoch, checkpoint=base, semirings=semirings)
            check["matches_replay"] = from_ckpt.digest() == from_log.digest() and from_log.epoch == epoch
        except MMSBError as e:
            faults.append(f"checkpoint {d}: replaying the log to its epoch fails: {e}")
            continue
        checks.append(check)
        if not check["matches_replay"]:
            faults.append(f"checkpoint {d} (epoch {epoch}) differs from a replay of the log to that epoch")
    # What opening builds: the newest usable checkpoint and the log after it (the tail); also
    # when the log is gone but the state was stopped past every checkpoint (records were lost).
    newest = max((e for _, e in cks), default=0)
    if has_log or not cks or last_closed_epoch(path) > newest:
        try:
            opened = snapshot()
            report = rebuild(opened, path, semirings=semirings)
            for d, why in report.skipped_checkpoints:
                faults.append(f"opening skips checkpoint {d}: {why}")
            if gaps and cks:
                notes.append(f"no full replay of the log: it has no epochs {gaps[0][0] + 1}..{gaps[0][1] - 1} "
                             "(a salvage open kept them in a checkpoint)")
            elif report.torn_tail is None and first == 1 and cks:
                full = snapshot()
                rebuild(full, path, checkpoint=None, semirings=semirings)
                if full.digest() != opened.digest():
                    faults.append(
                        f"the newest checkpoint plus the log tail (epoch {opened.epoch}) differs from a full "
                        f"replay of the log (epoch {full.epoch})"
                    )
        except MMSBError as e:
            faults.append(f"opening the state fails: {e}")
    if progress:
        progress(len(cks), len(cks), "done")
    return {"ok": not faults, "faults": faults, "records": n_records, "checkpoints": checks, "notes": notes}


def _epoch_gaps(records) -> list[tuple[int, int]]:
    """``(a, b)`` wherever the log holds epoch ``a`` and next epoch ``b > a + 1`` (what a
    salvage open leaves: the epochs it recovered past damage live in its checkpoint)."""
    gaps, last = [], None
    for r in records:
        if last is not None and r.epoch > last + 1:
            gaps.append((last, r.epoch))
        last = r.epoch if last is None else max(last, r.epoch)
    return gaps
