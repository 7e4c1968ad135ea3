"""The seed-compatible functional facade over :class:`MMSBState`.

Every function takes the state first and forwards to the method of the same name; they exist
so code written against the original ``mmsb_*`` API keeps working.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from ._checkpoint import is_checkpoint, read_manifest
from ._errors import SerializationError
from ._state import MMSBState, Page


def mmsb_start(path=None, enable_gpu: bool = False, semiring="real", fsync: str = "batch") -> MMSBState:
    """Start a new state.

    Args:
      path: the state's directory (its log and checkpoints live there). ``None``: a fresh
        temporary directory, removed again by :func:`mmsb_stop`.
      enable_gpu: place ``location="gpu"`` pages on a GPU. Without a usable GPU the state
        falls back to the CPU with one ``GPUFallbackWarning``.
      semiring: the semiring of dependency propagation (a record or a standard name).
      fsync: log durability, ``"always"`` (every commit fsynced before it returns),
        ``"batch"`` (group commit) or ``"never"``.

    Raises:
      InvalidArgumentError: unknown ``fsync`` or ``semiring``.
      SerializationError: ``path`` already holds a state (open it with :func:`mmsb_open`).

    Example:
      >>> import mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> state.epoch
      0
      >>> mmsb.mmsb_stop(state)
    """
    if path is not None and (is_checkpoint(os.fspath(path)) or os.path.isdir(os.path.join(os.fspath(path), "log"))):
        raise SerializationError(f"{os.fspath(path)!r} already holds an mmsb state; use mmsb_open to reopen it")
    return MMSBState(path, enable_gpu=enable_gpu, semiring=semiring, fsync=fsync)


def mmsb_stop(state: MMSBState, checkpoint_path=None) -> str | None:
    """Flush the log, optionally write a checkpoint to ``checkpoint_path``, and close the state.

    Returns the checkpoint directory, or ``None``. A state started with ``path=None`` has its
    temporary directory removed (the checkpoint, written elsewhere, stays).
    """
    out = None
    if checkpoint_path is not None:
        out = state.checkpoint(checkpoint_path)
    state.close()
    return out


def _newest_checkpoint(path: str) -> str | None:
    candidates = []
    if is_checkpoint(path):
        candidates.append(path)
    ck = os.path.join(path, "checkpoints")
    if os.path.isdir(ck):
        for name in sorted(os.listdir(ck)):
            d = os.path.join(ck, name)
            if is_checkpoint(d):
                candidates.append(d)
    best, best_epoch = None, -1
    for d in candidates:
        try:
            e = int(read_manifest(d)["epoch"])
        except (SerializationError, KeyError, TypeError, ValueError):
            continue  # an unreadable checkpoint is skipped; an older one (or the log) serves
        if e > best_epoch:
            best, best_epoch = d, e
    return best


def mmsb_open(path, *, enable_gpu: bool = False, fsync: str = "batch") -> MMSBState:
    """Reopen a state: its newest valid checkpoint, then the log records after it.

    ``path`` is a state directory or a checkpoint directory written by
    ``mmsb_stop(state, checkpoint_path=...)``; the reopened state keeps its log there.

    Raises:
      SerializationError: nothing to open at ``path``, or a checkpoint is inconsistent.
    """
    path = os.path.abspath(os.fspath(path))
    base = _newest_checkpoint(path)
    if base is None and not os.path.isdir(os.path.join(path, "log")):
        raise SerializationError(f"no mmsb checkpoint or log at {path!r}")
    semiring = read_manifest(base).get("semiring", "real") if base else "real"
    state = MMSBState(path, enable_gpu=enable_gpu, semiring=semiring, fsync=fsync)
    if base is not None:
        state._restore_checkpoint(base)
    return state


def create_page(state: MMSBState, size=None, dtype=jnp.uint8, location: str = "cpu", *, shape=None) -> Page:
    """Create one zero-filled page in a new epoch.

    Args:
      size: number of elements of a 1-D page (or give ``shape=``).
      dtype: page dtype (bool, integer or float).
      location: ``"cpu"`` or ``"gpu"`` (falls back to the CPU, with a warning, without one).
      shape: the page shape, for pages of more than one dimension.

    Returns:
      a :class:`Page` handle; ``page.id`` names the page.

    Raises:
      InvalidArgumentError: missing, negative or zero size, bad shape or dtype.
      UnsupportedLocationError: ``location`` not ``"cpu"`` / ``"gpu"``.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> mmsb.create_page(state, shape=(2, 3), dtype=jnp.float32)
      Page(id=0, shape=(2, 3), dtype=float32, location='cpu')
      >>> mmsb.mmsb_stop(state)
    """
    return state.create_page(size, dtype, location, shape=shape)


def create_pages(state: MMSBState, n: int, size=None, dtype=jnp.uint8, location: str = "cpu", *, shape=None) -> np.ndarray:
    """Create ``n`` zero-filled pages of one spec in a single epoch; returns their ids.

    Example:
      >>> import mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> mmsb.create_pages(state, 3, size=16).tolist()
      [0, 1, 2]
      >>> mmsb.mmsb_stop(state)
    """
    return state.create_pages(n, size, dtype, location, shape=shape)


def update_page(state: MMSBState, page_id, data) -> int | None:
    """Replace a page's whole content: diff -> dense delta -> log -> propagate.

    Returns the new epoch, or ``None`` when ``data`` equals the page bit for bit (a no-op:
    no epoch, nothing logged).

    Raises:
      PageNotFoundError: unknown page id.
      InvalidDeltaError: ``data`` has another shape or dtype than the page.
    """
    return state.update_page(page_id, data)


def route_delta(state: MMSBState, page_id, delta) -> int:
    """Apply any :class:`Delta` to a page in a new epoch (apply, log, propagate); returns the epoch.

    Raises:
      PageNotFoundError: unknown page id.
      InvalidDeltaError: the delta's shape, dtype or indices do not fit the page.
    """
    return state.route_delta(page_id, delta)


def batch_route_deltas(state: MMSBState, entries) -> int | None:
    """Route ``[(page_id, delta), ...]`` atomically in one epoch, with one propagation.

    The result equals routing the same deltas one by one, in order, also when a page repeats
    (repeated sparse targets: the later entry wins, resolved before the scatter). If any entry
    is invalid nothing is applied and no epoch is used. Returns the epoch (``None`` if empty).

    Raises:
      PageNotFoundError / InvalidDeltaError: naming the offending entry's position and page id.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> p = mmsb.create_page(state, size=4, dtype=jnp.float32)
      >>> d1 = mmsb.sparse_delta([0], jnp.array([1.0]), 4)
      >>> d2 = mmsb.sparse_delta([0, 3], jnp.array([2.0, 5.0]), 4)
      >>> mmsb.batch_route_deltas(state, [(p.id, d1), (p.id, d2)])
      2
      >>> mmsb.query_page(state, p.id).tolist()
      [2.0, 0.0, 0.0, 5.0]
      >>> mmsb.mmsb_stop(state)
    """
    return state.batch_route_deltas(entries)


def route_sparse_batch(state: MMSBState, page_ids, indices, values) -> int | None:
    """Route ``n`` sparse deltas given as arrays, in one epoch: the vectorized router.

    ``page[page_ids[i]].flat[indices[i, j]] = values[i, j]``, last writer wins in batch order.
    No per-delta Python objects: this is the path for millions of deltas per second.

    Args:
      page_ids: int ``(n,)``.
      indices: int ``(n, k)`` flat indices into each page.
      values: ``(n, k)`` of the pages' dtype.

    Raises:
      PageNotFoundError / InvalidDeltaError: naming the offending entry; nothing is applied.

    Example:
      >>> import numpy as np, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> ids = mmsb.create_pages(state, 2, size=4, dtype=np.uint8)
      >>> mmsb.route_sparse_batch(state, ids, np.array([[0, 1], [2, 3]]), np.full((2, 2), 7, np.uint8))
      2
      >>> mmsb.query_page(state, int(ids[1])).tolist()
      [0, 0, 7, 7]
      >>> mmsb.mmsb_stop(state)
    """
    return state.route_sparse_batch(page_ids, indices, values)


def query_page(state, page_id):
    """The value a reader sees for a page (after propagation), as a ``jax.Array``.

    Raises:
      PageNotFoundError: unknown page id.
    """
    return state.query_page(page_id)


def delete_page(state: MMSBState, page_id) -> None:
    """Delete a page in a new epoch; its slot is zeroed and later reused.

    Raises:
      PageNotFoundError: unknown page id.
    """
    state.delete_page(page_id)


def checkpoint(state: MMSBState, directory=None) -> str:
    """Write a checkpoint of the state; returns its directory (see :meth:`MMSBState.checkpoint`)."""
    return state.checkpoint(directory)


def state_digest(state) -> str:
    """A hex digest of every page's id, epoch and bytes, and the state's epoch.

    Two states (or snapshots) with equal digests hold the same pages bit for bit.
    """
    return state.digest()


def get_stats(state) -> dict:
    """Telemetry of the state as a dict (pages, bytes, epochs, per-pool allocator stats, counters)."""
    return state.stats()
