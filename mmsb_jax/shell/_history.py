"""Time travel over the log: compaction, page history, diffs between epochs."""

from __future__ import annotations

import json

import numpy as np

from .._errors import InvalidArgumentError
from ..log._directory import update_state_file
from ._distributed import collective


@collective("compact_log")
def compact_log(state) -> dict:
    """Fold the log into a checkpoint: write one now, then drop every log segment whose
    records it covers (the original's ``compress_log!``).

    The active segment is closed first, so every record up to now can go. Replaying to any
    epoch at or after the checkpoint gives exactly what it gave before; epochs before it are
    no longer reachable (``replay_to_epoch`` raises for them, naming compaction), and the
    state's settings file records how far the log was compacted, so a replay never mistakes
    the shortened log for a whole one.

    Returns ``{"checkpoint": dir, "epoch": E, "dropped_segments": [...], "bytes_freed": n}``.

    Raises:
      StateClosedError / ReadOnlyError: the state is stopped, or a snapshot.

    Example:
      >>> import numpy as np, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> page = mmsb.create_page(state, size=4)
      >>> _ = mmsb.update_page(state, page.id, np.arange(4, dtype=np.uint8))
      >>> out = mmsb.compact_log(state)
      >>> out["epoch"], len(out["dropped_segments"])
      (2, 1)
      >>> mmsb.replay_to_epoch(state, 1)
      Traceback (most recent call last):
      ...
      mmsb_jax.SerializationError: ...compacted away...
      >>> mmsb.mmsb_stop(state)
    """
    with state._lock:
        state._check_open()
        directory = state.checkpoint()
        epoch = state.epoch

        def fold() -> dict:
            log = state._log
            before = log.stats()["bytes"]
            log.seal()  # every record so far now lies in a closed segment
            # recorded first: a crash between the two leaves a log that says it lacks epochs it
            # still has (replays of them are refused), never one that passes for whole
            update_state_file(state.path, compacted_through=epoch)
            dropped = log.drop_segments_through(epoch)
            after = log.stats()["bytes"]
            return {
                "checkpoint": directory,
                "epoch": epoch,
                "dropped_segments": [str(p) for p in dropped],
                "bytes_freed": int(before - after),
            }

        if state._dist is None:
            return fold()
        # several processes: process 0 writes the log; every process returns what it did
        _, done = state._dist.everywhere("compact the log", lambda: fold() if state._writes_files else None,
                                         share=lambda out: json.dumps(out) if out is not None else "")
        return json.loads(done[0])


@collective("diff")
def diff(state, epoch_a: int, epoch_b: int) -> dict:
    """What changed between two epochs: pages created, deleted, and changed (with counts).

    Returns ``{"created": [ids], "deleted": [ids], "changed": {id: changed_elements},
    "changed_bytes": total}`` comparing the visible values at ``epoch_a`` and ``epoch_b``.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> p = mmsb.create_page(state, size=4, dtype=jnp.uint8)
      >>> _ = mmsb.update_page(state, p.id, jnp.array([1, 0, 0, 2], jnp.uint8))
      >>> mmsb.diff(state, 1, 2)["changed"]
      {0: 2}
      >>> mmsb.mmsb_stop(state)
    """
    from ._lifecycle import replay_to_epoch

    if epoch_a > epoch_b:
        raise InvalidArgumentError(f"diff needs epoch_a <= epoch_b, got {epoch_a} > {epoch_b}")
    a = replay_to_epoch(state, epoch_a)
    b = replay_to_epoch(state, epoch_b)
    ids_a, ids_b = set(a.page_ids().tolist()), set(b.page_ids().tolist())
    changed, nbytes = {}, 0
    for pid in sorted(ids_a & ids_b):
        va, vb = np.asarray(a.query_page(pid)), np.asarray(b.query_page(pid))
        ua = np.ascontiguousarray(va).reshape(-1).view(f"u{va.itemsize}")
        ub = np.ascontiguousarray(vb).reshape(-1).view(f"u{vb.itemsize}")
        n = int(np.count_nonzero(ua != ub))  # bitwise: NaN == NaN, -0.0 != 0.0
        if n:
            changed[pid] = n
            nbytes += int(np.count_nonzero(ua.view(np.uint8) != ub.view(np.uint8)))
    return {
        "created": sorted(ids_b - ids_a),
        "deleted": sorted(ids_a - ids_b),
        "changed": changed,
        "changed_bytes": nbytes,
    }
