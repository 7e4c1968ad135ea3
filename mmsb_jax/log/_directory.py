"""A state directory's checkpoints: which exist, which is newest, whether a state is there.

Pure directory helpers over the files (no jax). A state directory holds ``log/`` (the
transaction log) and ``checkpoints/epoch-<E>/`` (checkpoints); a directory written by
``mmsb_stop(state, checkpoint_path=...)`` is itself a checkpoint.
"""

from __future__ import annotations

import os

from .._errors import SerializationError
from ._checkpoint import is_checkpoint, read_manifest


def list_checkpoints(path: str) -> list[tuple[str, int]]:
    """Every checkpoint under ``path`` (itself, then ``checkpoints/*``) as ``(directory, epoch)``;
    epoch ``-1`` marks one whose manifest cannot be read."""
    dirs = [path] if is_checkpoint(path) else []
    ck = os.path.join(path, "checkpoints")
    if os.path.isdir(ck):
        dirs += [os.path.join(ck, n) for n in sorted(os.listdir(ck)) if is_checkpoint(os.path.join(ck, n))]
    out = []
    for d in dirs:
        try:
            out.append((d, int(read_manifest(d)["epoch"])))
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


def require_state(path: str) -> None:
    """Raise SerializationError unless ``path`` holds an mmsb checkpoint or log."""
    if newest_checkpoint(path)[0] is None and not os.path.isdir(os.path.join(path, "log")):
        raise SerializationError(f"no mmsb checkpoint or log at {path!r}")
