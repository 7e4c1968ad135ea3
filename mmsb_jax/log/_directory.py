"""A state directory: its settings file, its checkpoints, and whether a state is there.

Pure directory helpers over the files (no jax). A state directory holds ``log/`` (the
transaction log), ``mmsb-state.json`` (the settings the log does not carry: the semiring;
checksummed) and ``checkpoints/epoch-<E>/`` (checkpoints); a directory written by
``mmsb_stop(state, checkpoint_path=...)`` is itself a checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil

from .._errors import SerializationError
from ._checkpoint import MANIFEST, is_checkpoint, read_manifest
from ._files import fsync_dir, read_checked_json, write_checked_json
from ._reader import first_logged_epoch

STATE_FILE = "mmsb-state.json"
STATE_FORMAT = "mmsb-state"
STATE_VERSION = 2  # 2: checksummed
CHECKPOINTS = "checkpoints"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


# --------------------------------------------------------------------------- the settings file
_COUNTS = ("compacted_through", "closed_at")


def write_state_file(path: str, semiring: str, *, compacted_through: int = 0, closed_at: int = 0,
                     salvaged=()) -> None:
    """Write ``<path>/mmsb-state.json`` (atomically, with its checksum).

    ``compacted_through``: the last epoch whose records compaction removed from the log (0:
    none), so a replay knows the log alone cannot rebuild the epochs up to it.
    ``closed_at``: the epoch the state had when it was last stopped cleanly (0: never), so an
    open that finds fewer epochs knows records were lost after they were made durable.
    ``salvaged``: the epochs at which a salvage open (``point_in_time`` / ``skip_corrupt``)
    checkpointed what it recovered and cut the log: the log then jumps from the records
    before the damage to the epoch after it, and only such a jump is not damage."""
    info = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "semiring": semiring,
        "compacted_through": int(compacted_through), "closed_at": int(closed_at),
    }
    if salvaged:  # (absent in states never salvaged: their files stay as they were)
        info["salvaged"] = sorted(int(e) for e in salvaged)
    write_checked_json(os.path.join(path, STATE_FILE), info)


def update_state_file(path: str, **changes) -> None:
    """Rewrite the settings file with some fields changed (``compacted_through``, ``closed_at``)."""
    info = read_state_file(path)
    if info is None:
        raise SerializationError(f"{os.path.join(path, STATE_FILE)!r} is missing")
    kept = {k: int(info.get(k, 0)) for k in _COUNTS}
    kept["salvaged"] = list(info.get("salvaged", ()))
    kept.update(changes)
    write_state_file(path, info["semiring"], **kept)


def salvaged_epochs(path: str) -> list[int]:
    """The epochs at which salvage opens checkpointed the state at ``path`` (see
    :func:`write_state_file`)."""
    info = read_state_file(path)
    return list(info.get("salvaged", ())) if info is not None else []


def last_closed_epoch(path: str) -> int:
    """The epoch the state at ``path`` had when it was last stopped cleanly (0 if never or unknown)."""
    info = read_state_file(path)
    return int(info.get("closed_at", 0)) if info is not None else 0


def log_floor(path: str) -> int:
    """The first epoch the log of the state at ``path`` can still provide: after the epochs its
    compaction removed (from the settings file), and no earlier than its oldest segment."""
    info = read_state_file(path)
    floor = int(info.get("compacted_through", 0)) + 1 if info is not None else 1
    first = first_logged_epoch(os.path.join(path, "log"))
    return max(floor, first) if first is not None else floor


def read_state_file(path: str) -> dict | None:
    """The settings of the state at ``path``, or ``None`` when it has no settings file.

    Raises:
      SerializationError: the file is damaged or edited (checksum), or of an unknown format.
    """
    file = os.path.join(path, STATE_FILE)
    if not os.path.lexists(file):
        return None
    info = read_checked_json(file, "state settings file")
    if info.get("format") != STATE_FORMAT or info.get("version") != STATE_VERSION:
        raise SerializationError(
            f"{file!r} is not an mmsb state settings file of version {STATE_VERSION} "
            f"(format={info.get('format')!r}, version={info.get('version')!r})"
        )
    if not isinstance(info.get("semiring"), str):
        raise SerializationError(f"{file!r} names no semiring")
    for k in _COUNTS:
        v = info.get(k, 0)
        if not (type(v) is int and v >= 0):
            raise SerializationError(f"{file!r} has {k}={v!r}")
    salvaged = info.get("salvaged", [])
    if not (isinstance(salvaged, list) and all(type(v) is int and v >= 0 for v in salvaged)):
        raise SerializationError(f"{file!r} has salvaged={salvaged!r:.80}")
    return info


def state_semiring(path: str) -> str:
    """The name of the semiring the state at ``path`` was started with.

    Its settings file and the manifests of its readable checkpoints (both checksummed) must
    agree; with neither, a state that has a log is refused (its semiring is unknown) and an
    empty one reads as ``"real"``.

    Raises:
      SerializationError: the settings file is damaged, or the files disagree, or a log
        without settings.
    """
    info = read_state_file(path)
    named = {} if info is None else {os.path.join(path, STATE_FILE): info["semiring"]}
    for d, epoch in list_checkpoints(path):
        if epoch >= 0:
            named[d] = str(read_manifest(d).get("semiring"))
    if len(set(named.values())) > 1:
        raise SerializationError(
            f"the files of {path!r} disagree about the semiring: "
            + ", ".join(f"{os.path.relpath(k, path) if k != path else '.'} says {v!r}" for k, v in named.items())
        )
    if named:
        return next(iter(named.values()))
    if os.path.isdir(os.path.join(path, "log")) and os.listdir(os.path.join(path, "log")):
        raise SerializationError(
            f"{path!r} has a log but no {STATE_FILE} and no checkpoint: the semiring its "
            "dependencies were logged under is unknown"
        )
    return "real"


# --------------------------------------------------------------------------- checkpoints
def epoch_of_name(directory: str) -> int | None:
    """The epoch a default checkpoint directory's name claims (``epoch-000000000042``), or None."""
    m = _EPOCH_DIR.match(os.path.basename(os.path.normpath(directory)))
    return int(m.group(1)) if m else None


def list_checkpoints(path: str) -> list[tuple[str, int]]:
    """Every checkpoint under ``path`` (itself, then ``checkpoints/*``) as ``(directory, epoch)``;
    epoch ``-1`` marks one whose manifest cannot be read."""
    dirs = [path] if is_checkpoint(path) else []
    ck = os.path.join(path, CHECKPOINTS)
    if os.path.isdir(ck):
        dirs += [os.path.join(ck, n) for n in sorted(os.listdir(ck)) if is_checkpoint(os.path.join(ck, n))]
    out = []
    for d in dirs:
        try:
            epoch = read_manifest(d)["epoch"]
            out.append((d, int(epoch) if type(epoch) is int and epoch >= 0 else -1))
        except (SerializationError, KeyError, TypeError, ValueError):
            out.append((d, -1))
    return out


def newest_checkpoint(path: str, max_epoch: int | None = None) -> tuple[str | None, int]:
    """The newest readable checkpoint under ``path`` with ``epoch <= max_epoch``; returns
    ``(directory or None, epoch or 0)``. Unreadable ones are skipped: an older one or the log serves."""
    usable = [(d, e) for d, e in list_checkpoints(path) if e >= 0 and (max_epoch is None or e <= max_epoch)]
    if not usable:
        return None, 0
    return max(usable, key=lambda t: t[1])


def has_state(path: str) -> bool:
    """Whether ``path`` holds anything of an mmsb state (a checkpoint, a log, settings)."""
    return bool(
        is_checkpoint(path)
        or os.path.isdir(os.path.join(path, "log"))
        or os.path.lexists(os.path.join(path, STATE_FILE))
        or list_checkpoints(path)
    )


def require_state(path: str) -> None:
    """Raise SerializationError unless ``path`` holds an mmsb checkpoint or log."""
    if not (is_checkpoint(path) or os.path.isdir(os.path.join(path, "log")) or list_checkpoints(path)):
        raise SerializationError(f"no mmsb checkpoint or log at {path!r}")


def remove_incomplete_checkpoints(path: str) -> list[str]:
    """Delete the directories under ``<path>/checkpoints`` that hold no manifest: the remains
    of checkpoints a crash interrupted (the manifest is written last). Returns them.

    Only for the writer of the state (it holds the log's lock, so no checkpoint is being
    written by anyone else)."""
    ck = os.path.join(path, CHECKPOINTS)
    removed = []
    if os.path.isdir(ck):
        for name in sorted(os.listdir(ck)):
            d = os.path.join(ck, name)
            if os.path.isdir(d) and not os.path.lexists(os.path.join(d, MANIFEST)):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        if removed:
            fsync_dir(ck)
    return removed


def prune_checkpoints(path: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` readable checkpoints under ``<path>/checkpoints``.

    Unreadable ones are left for inspection (``mmsb verify`` reports them). Returns the
    deleted directories."""
    mine = [(d, e) for d, e in list_checkpoints(path) if e >= 0 and os.path.dirname(d) == os.path.join(path, CHECKPOINTS)]
    mine.sort(key=lambda t: t[1])
    doomed = [d for d, _ in mine[: max(0, len(mine) - keep)]]
    for d in doomed:
        # the manifest goes first: a crash mid-delete leaves an incomplete checkpoint, not a wrong one
        os.unlink(os.path.join(d, MANIFEST))
        shutil.rmtree(d, ignore_errors=True)
    if doomed:
        fsync_dir(os.path.join(path, CHECKPOINTS))
    return doomed
