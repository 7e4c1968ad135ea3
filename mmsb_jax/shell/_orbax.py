"""An MMSB state inside an orbax ``CheckpointManager``, next to the rest of a TrainState.

::

    import orbax.checkpoint as ocp
    from mmsb_jax import MMSBSave, MMSBRestore

    mngr = ocp.CheckpointManager(directory)
    mngr.save(step, args=ocp.args.Composite(mmsb=MMSBSave(state), params=ocp.args.StandardSave(params)))
    mngr.wait_until_finished()
    out = mngr.restore(step, args=ocp.args.Composite(mmsb=MMSBRestore(), params=ocp.args.StandardRestore(params)))
    out.mmsb        # a read-only snapshot of the state at that save (query_page, load_tree, ...)

``MMSBSave`` copies the state to host memory when ``mngr.save`` is called (under the state's
lock, so the checkpoint is the state exactly at that call) and writes it on the state's own
background checkpoint thread, the one ``checkpoint(block=False)`` uses, once orbax has made
the item's directory: an mmsb checkpoint (orbax arrays + manifest), so ``mmsb_open`` and
``mmsb verify`` read it too. ``MMSBRestore()`` gives a read-only snapshot;
``MMSBRestore(path=dir)`` starts a live state in the new directory ``dir`` from it (its log
begins after the checkpoint's epoch: earlier steps of its trees are not in it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import threading
from typing import Any

import orbax.checkpoint as ocp

from .._checks import existing_part
from .._errors import InvalidArgumentError, SerializationError, StateClosedError
from ..log._checkpoint import read_manifest
from . import _inputs
from ._replay import resolve_semiring
from ._state import MMSBState


def _checkpoint_when_ready(state: MMSBState, directory: str, ready: threading.Event):
    """Copy ``state`` to host memory now; its checkpoint thread writes ``directory`` once
    ``ready`` is set. Returns the ``concurrent.futures.Future`` of the write."""
    if not isinstance(state, MMSBState):
        raise InvalidArgumentError(f"MMSBSave needs an MMSBState, got {type(state).__name__}")
    with state._lock:
        state._raise_failed_checkpoint()
        if state.closed:
            raise StateClosedError(f"the state at {state.path!r} is stopped")
        state._raise_journal_failure()
        return state._write_checkpoint(os.path.abspath(directory), False, ready=ready)


class MMSBCheckpointHandler(ocp.AsyncCheckpointHandler):
    """Saves an :class:`MMSBState` as an mmsb checkpoint in an orbax item directory."""

    async def async_save(self, directory, args: MMSBSave = None, **kwargs):
        ready = threading.Event()
        written = _checkpoint_when_ready(args.state, os.fspath(directory), ready)

        async def commit():
            ready.set()  # orbax runs this once the item's directory exists
            await asyncio.wrap_future(written)

        return [ocp.future.CommitFutureAwaitingContractedSignals(commit(), name="mmsb_save")]

    def save(self, directory, args: MMSBSave = None, **kwargs):
        ready = threading.Event()
        ready.set()
        _checkpoint_when_ready(args.state, os.fspath(directory), ready).result()

    def restore(self, directory, args: MMSBRestore = None, **kwargs) -> MMSBState:
        args = args or MMSBRestore()
        directory = os.path.abspath(os.fspath(directory))
        manifest = read_manifest(directory)
        semiring = resolve_semiring(str(manifest.get("semiring", "real")), args.semirings)
        if args.path is None:
            snap = MMSBState(directory, semiring=semiring, derive=args.derive, _snapshot=True)
            snap._restore_checkpoint(directory)
            snap.read_only = True
            return snap
        from ._lifecycle import mmsb_open

        target = _inputs.path(args.path, "MMSBRestore(path)")
        above = existing_part(target)
        if not os.path.isdir(above):
            raise InvalidArgumentError(f"MMSBRestore(path={target!r}): {above!r} exists and is not a directory")
        if os.path.exists(target) and os.listdir(target):
            raise SerializationError(f"MMSBRestore(path={target!r}): the directory is not empty")
        shutil.copytree(directory, os.path.join(target, "checkpoints", f"epoch-{int(manifest['epoch']):012d}"))
        return mmsb_open(target, semirings=args.semirings, derive=args.derive)

    def metadata(self, directory) -> dict[str, Any]:
        """The checkpoint's manifest (epoch, pools, trees, ...), without reading arrays."""
        return read_manifest(os.fspath(directory))


@ocp.args.register_with_handler(MMSBCheckpointHandler, for_save=True)
@dataclasses.dataclass
class MMSBSave(ocp.args.CheckpointArgs):
    """Save ``state`` (an :class:`MMSBState`) with ``mngr.save(step, args=Composite(mmsb=MMSBSave(state), ...))``."""

    state: MMSBState

    def __post_init__(self):  # refused before orbax makes its temporary directory
        if not isinstance(self.state, MMSBState):
            raise InvalidArgumentError(f"MMSBSave(state={self.state!r}) needs an MMSBState")
        if self.state.closed:
            raise StateClosedError(f"the state at {self.state.path!r} is stopped; MMSBSave needs a live state")


@ocp.args.register_with_handler(MMSBCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class MMSBRestore(ocp.args.CheckpointArgs):
    """Restore as a read-only snapshot (``path=None``) or as a live state in the new directory ``path``.

    ``semirings``: user-defined semirings the state's log names; ``derive``: the functions of
    derived pages by name (both as for :func:`mmsb_open`).
    """

    path: str | os.PathLike | None = None
    semirings: tuple = ()
    derive: dict | None = None
