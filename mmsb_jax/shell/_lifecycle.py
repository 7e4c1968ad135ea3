"""The lifecycle of a state: :func:`mmsb_start`, :func:`mmsb_stop`, :func:`mmsb_open` and
:func:`replay_to_epoch` build, open, close or rebuild an :class:`MMSBState` (the rest of the
seed-compatible functions are in :mod:`._api`)."""

from __future__ import annotations

import os
import time


from .._checks import is_int
from .._errors import InvalidArgumentError, SerializationError, StateClosedError
from ..log import query_records
from ..log._reader import log_bytes_from
from ..log._directory import (
    has_state,
    last_closed_epoch,
    newest_checkpoint,
    require_state,
    state_semiring,
    salvaged_epochs,
    update_state_file,
)
from ..semirings import Semiring, get_semiring
from . import _inputs
from ._distributed import collective, coordinator_for, paused, same_everywhere
from ._fingerprint import fingerprint
from ._replay import rebuild, resolve_semiring
from ._state import MMSBState


def mmsb_start(path=None, enable_gpu: bool = False, semiring="real", fsync: str = "batch", *,
               segment_bytes: int = 64 << 20, mesh=None, exist_ok: bool = False,
               keep_checkpoints: int | None = None, peer_timeout: float = 60.0,
               checkpoint_policy=None, derive=None) -> MMSBState:
    """Start a new state (or, with ``exist_ok=True``, open the one already at ``path``).

    Args:
      path: the state's directory (its log and checkpoints live there). ``None``: a fresh
        temporary directory, removed again by :func:`mmsb_stop`.
      enable_gpu: place ``location="gpu"`` pages on a GPU. Without a usable GPU the state
        falls back to the CPU with one ``GPUFallbackWarning``.
      semiring: the semiring of dependency propagation (a record or a standard name).
      fsync: log durability. ``"always"``: every commit is written and fsynced before it
        returns. ``"batch"`` (group commit): written to the OS at once and fsynced by a
        background thread within about 5 ms, so a crash of the machine loses at most the
        last few milliseconds (a crash of the process alone loses nothing written).
        ``"never"``: buffered in the process and written to the OS only when 1 MiB is
        buffered, on a checkpoint and on :func:`mmsb_stop`; never fsynced. A process killed
        without ``mmsb_stop`` loses what was still buffered (up to 1 MiB of records).
      segment_bytes: log segments rotate at this size (compaction drops whole segments).
      mesh: a ``jax.sharding.Mesh``: pools on its platform are split over all its devices
        along the slot axis (``NamedSharding(mesh, P(mesh.axis_names))``), each shard
        writing only its own slots. Placement is not state: the log, checkpoints and
        :func:`state_digest` are the same with any mesh or none, and a state can be reopened
        with another one. A mesh over the devices of every process of a ``jax.distributed``
        job makes one state of all of them: every process calls the same operations with the
        same arguments, process 0 writes the log, ``path`` must be on a filesystem they all
        see (see ``mmsb_jax/shell/_distributed.py`` and the README's "Several processes").
      exist_ok: if ``path`` already holds a state, open it (:func:`mmsb_open`) instead of
        refusing; its semiring must then be ``semiring``.
      keep_checkpoints: keep only this many checkpoints under ``<path>/checkpoints`` (the
        newest; older ones are deleted after each new one is complete). ``None``: keep all.
      peer_timeout: a state spread over several processes: how many seconds one process
        waits for the others at an operation before raising ``PeerLostError`` (at most
        2,000,000: the runtime waits in int32 milliseconds).
      checkpoint_policy: ``None`` (checkpoints only when asked), ``"auto"`` or a
        :class:`~mmsb_jax.CheckpointPolicy`: after an operation, a background checkpoint is
        taken when the estimated replay time (or the bytes) of the log since the newest
        checkpoint passes the policy's bound, so reopening and ``replay_to_epoch`` of recent
        epochs stay bounded. Combine with ``keep_checkpoints`` to bound the disk too. Its
        decisions are in ``get_stats(state)["adaptive"]["checkpoint_policy"]``.
      derive: ``{name: fn}``, the functions of derived pages (see :func:`derive`): given here,
        :func:`derive` calls may name them; needed with ``exist_ok=True`` to reopen a state
        that has derived pages (as for :func:`mmsb_open`).

    Raises:
      InvalidArgumentError: unknown ``fsync`` or ``semiring``, ``mesh`` not a ``Mesh``, a bad
        ``segment_bytes``, ``keep_checkpoints`` or ``peer_timeout``, ``path`` is not a path
        (or is ``None`` for a mesh over several processes).
      DivergenceError / PeerLostError: (several processes) they were called differently, or
        one did not answer.
      SerializationError: ``path`` already holds a state (open it with :func:`mmsb_open`, or
        pass ``exist_ok=True``), or with ``exist_ok`` the state there has another semiring.

    Example:
      >>> import mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> state.epoch
      0
      >>> mmsb.mmsb_stop(state)
    """
    dist = coordinator_for(mesh, path, peer_timeout)  # None unless the mesh spans processes
    if dist is not None:  # the path is left out: hosts may mount one directory at different paths
        dist.agree("mmsb_start", fingerprint(enable_gpu, semiring, fsync, segment_bytes, exist_ok, keep_checkpoints))
    if path is not None:
        path = _inputs.path(path)
        exists = has_state(path)
        same_everywhere(dist, "whether a state exists at the path", exists)
        if exists:
            if not exist_ok:
                raise SerializationError(
                    f"{path!r} already holds an mmsb state; use mmsb_open to reopen it (or mmsb_start(..., exist_ok=True))"
                )
            state = mmsb_open(path, enable_gpu=enable_gpu, fsync=fsync, segment_bytes=segment_bytes, mesh=mesh,
                              semirings=(semiring,) if isinstance(semiring, Semiring) else (),
                              keep_checkpoints=keep_checkpoints, peer_timeout=peer_timeout,
                              checkpoint_policy=checkpoint_policy, derive=derive, _dist=dist)
            wanted = get_semiring(semiring).name
            if state.semiring.name != wanted:
                state.close()
                raise SerializationError(
                    f"the state at {path!r} propagates under semiring {state.semiring.name!r}, not {wanted!r}"
                )
            return state
    state = MMSBState(path, enable_gpu=enable_gpu, semiring=semiring, fsync=fsync, segment_bytes=segment_bytes,
                      mesh=mesh, keep_checkpoints=keep_checkpoints, checkpoint_policy=checkpoint_policy,
                      derive=derive, _dist=dist)
    state.open_log()
    return state


def mmsb_stop(state: MMSBState, checkpoint_path=None) -> str | None:
    """Flush the log, optionally write a checkpoint to ``checkpoint_path``, and close the state.

    Returns the checkpoint directory, or ``None``. A state started with ``path=None`` has its
    temporary directory removed (the checkpoint, written elsewhere, stays).

    Raises:
      InvalidArgumentError: ``state`` is not a state, or ``checkpoint_path`` is not a path or
        lies inside the temporary directory that stopping removes (the state stays open).
      SerializationError: ``checkpoint_path`` exists and is not a directory, or already holds
        a checkpoint (the state stays open).
    """
    if not isinstance(state, MMSBState):
        raise InvalidArgumentError(f"state={state!r} is not an MMSBState")
    out = None
    if checkpoint_path is not None:
        target = _inputs.path(checkpoint_path, "checkpoint_path")
        if state._owns_dir and os.path.commonpath([target, state.path]) == state.path:
            raise InvalidArgumentError(
                f"checkpoint_path={target!r} is inside the temporary state directory {state.path!r}, "
                "which mmsb_stop removes; write the checkpoint elsewhere"
            )
        out = state.checkpoint(target)
    state.close()
    return out


def mmsb_open(path, *, enable_gpu: bool = False, fsync: str = "batch", recovery: str = "torn_tail",
              semirings=(), segment_bytes: int = 64 << 20, mesh=None, keep_checkpoints: int | None = None,
              peer_timeout: float = 60.0, derive=None, checkpoint_policy=None, _dist=None) -> MMSBState:
    """Reopen a state: its newest valid checkpoint, then every log record after it.

    The result equals a full replay of the log from an empty state, bit for bit
    (:func:`state_digest`). ``path`` is a state directory, or a checkpoint directory written
    by ``mmsb_stop(state, checkpoint_path=...)`` (the reopened state then logs there). A
    damaged checkpoint is passed over for an older one or for the log alone, when they rebuild
    the state at least as far; ``state.recovery_report.skipped_checkpoints`` says which and why.
    Checkpoint directories that a crash left incomplete (no manifest) are removed.

    Args:
      recovery: how to treat a damaged log: ``"torn_tail"`` (default: only an incomplete last
        record is dropped; damage followed by intact records raises ``CorruptLogError``),
        ``"absolute"`` (any damage raises), ``"point_in_time"`` (stop at the first damage; an
        intact record that cannot apply raises ``CorruptLogError`` naming it, as the strict
        modes do), ``"skip_corrupt"`` (salvage every intact record, skipping those that cannot
        apply). ``state.recovery_report`` says what was dropped. A record that needs what only
        the caller can give (JAX's 64-bit mode for 64-bit pages, a user semiring, a derive
        function) is never skipped: every mode raises, naming the record and the fix.
      semirings: user-defined semirings named in logged accumulate deltas.
      mesh: shard the pools over this mesh (see :func:`mmsb_start`); a mesh over every
        process of a ``jax.distributed`` job reopens one state in all of them (each restores
        only its shards), whatever number of processes wrote it.
      keep_checkpoints, peer_timeout, checkpoint_policy: see :func:`mmsb_start` (a reopen
        whose replayed tail is already past the policy's bound takes a checkpoint at once).
      derive: ``{name: fn}``, the functions of derived pages (:func:`derive`) by the name they
        were logged under.

    Raises:
      InvalidArgumentError: ``path`` is not a path, or a bad option.
      DeriveFunctionError: a derived page's function is not in ``derive``, or does not fit
        its parents (named in the error).
      SerializationError: nothing to open at ``path``, damaged settings or checkpoints that no
        older checkpoint or log can stand in for, or a log that does not continue them;
        ``CorruptLogError`` (a subclass) names file and offset.
    """
    t0 = time.perf_counter()
    dist = _dist
    if dist is None:
        dist = coordinator_for(mesh, path, peer_timeout)
        if dist is not None:
            dist.agree("mmsb_open", fingerprint(enable_gpu, fsync, recovery, semirings, segment_bytes,
                                                keep_checkpoints))
    path = _inputs.path(path)

    def find():
        require_state(path)
        return resolve_semiring(state_semiring(path), semirings)

    semiring = find() if dist is None else dist.everywhere("find the state", find)[0]
    state = MMSBState(path, enable_gpu=enable_gpu, semiring=semiring, fsync=fsync, segment_bytes=segment_bytes,
                      mesh=mesh, keep_checkpoints=keep_checkpoints, derive=derive,
                      checkpoint_policy=checkpoint_policy, _dist=dist)
    with paused(state):  # every process replays the same files: no agreement per record
        if dist is None:
            report = rebuild(state, path, mode=recovery, semirings=semirings)
        else:
            report, _ = dist.everywhere("replay the state", lambda: rebuild(state, path, mode=recovery,
                                                                           semirings=semirings))
            same_everywhere(dist, "the epoch the replay reached", state.epoch)
    state.recovery_report = report
    salvaged = recovery in ("point_in_time", "skip_corrupt") and not report.clean
    state.open_log(recovery="point_in_time" if salvaged else "torn_tail")
    if salvaged:
        # The writer cuts the log at the first damage; a checkpoint keeps what replay
        # salvaged past it, so the next reopen sees the same state, which is now the
        # state of record (what it lost is in the report).
        state.checkpoint()
        if state._writes_files:
            update_state_file(path, closed_at=state.epoch, salvaged=salvaged_epochs(path) + [state.epoch])
    elif state._ckpt_policy is not None:
        if state._tail_first is not None:  # the bytes of the tail this open replayed
            state._tail_bytes_at_open = log_bytes_from(os.path.join(path, "log"), *state._tail_first)
        state._maybe_checkpoint()  # the tail this open replayed may already be past the bound
    state._telemetry.observe("open", time.perf_counter() - t0)
    return state


@collective("replay_to_epoch")
def replay_to_epoch(path_or_state, epoch: int | None, *, semirings=(), derive=None) -> MMSBState:
    """A read-only snapshot of the state as it was right after ``epoch``.

    Built from the newest checkpoint at or before ``epoch`` plus the log records up to it
    (batched through the router). Query it with :func:`query_page`; ``snap.epoch == epoch``.
    The snapshot of a state spread over several processes is spread over them the same way
    (every process calls this, and then queries it, alike). ``derive``: the functions of
    derived pages (as for :func:`mmsb_open`; a live state lends its own).
    Writes raise ``ReadOnlyError``. ``epoch=None`` replays everything (the state's last epoch).

    Raises:
      InvalidArgumentError: a negative epoch, or one past the state's last epoch (for a state
        object and a path alike); a bad path.
      SerializationError: the epochs up to ``epoch`` were compacted away, or the files needed
        are damaged (``CorruptLogError`` names file and offset).

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> p = mmsb.create_page(state, size=2, dtype=jnp.float32)
      >>> mmsb.update_page(state, p.id, jnp.ones(2, jnp.float32))
      2
      >>> snap = mmsb.replay_to_epoch(state, 1)
      >>> mmsb.query_page(snap, p.id).tolist()
      [0.0, 0.0]
      >>> mmsb.mmsb_stop(state)
    """
    if isinstance(path_or_state, MMSBState):
        if path_or_state.closed:
            raise StateClosedError(f"the state at {path_or_state.path!r} is stopped")
        path_or_state._flush_log()
        path, last = path_or_state.path, path_or_state.epoch
        semiring = path_or_state.semiring
        mesh = path_or_state.mesh if path_or_state._dist is not None else None
        derive = {**path_or_state._derive_fns, **(derive or {})}
    else:
        path, last, semiring, mesh = _inputs.path(path_or_state, "path_or_state"), None, None, None
        require_state(path)
    if epoch is None:
        epoch = last
    elif not is_int(epoch) or epoch < 0:
        raise InvalidArgumentError(f"epoch={epoch!r} must be a non-negative int (or None: the last epoch)")
    if last is not None and epoch > last:
        raise InvalidArgumentError(f"epoch={epoch} is past the state's last epoch {last}")
    if semiring is None:
        semiring = resolve_semiring(state_semiring(path), semirings)
    snap = MMSBState(path, semiring=semiring, mesh=mesh, derive=derive, _snapshot=True)
    with paused(snap):
        snap.recovery_report = rebuild(snap, path, end_epoch=None if epoch is None else int(epoch), semirings=semirings)
    snap.read_only = True
    if epoch is not None and snap.epoch != epoch:
        log_dir = os.path.join(path, "log")
        later = os.path.isdir(log_dir) and query_records(log_dir, epochs=(int(epoch), None))
        if not later and max(newest_checkpoint(path)[1], last_closed_epoch(path)) < epoch:
            raise InvalidArgumentError(f"epoch={epoch} is past the state's last epoch {snap.epoch}")
        raise SerializationError(
            f"epoch {epoch} of {path!r} cannot be rebuilt: its log and checkpoints reach epoch {snap.epoch} "
            f"before it (the epochs between were compacted away or are missing)"
        )
    return snap
