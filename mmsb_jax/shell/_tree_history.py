"""A tree's history: any step back (``load_tree``), what changed between two (``tree_diff``),
and the first step where something holds, found by bisection (``find_step``).

A step whose leaves no later epoch changed is read straight from the pages; any other step
is rebuilt by :func:`mmsb_jax.replay_to_epoch` (the newest checkpoint at or before it, plus the
log up to it), so ``find_step`` costs O(log steps) such restores, not a scan.
"""

from __future__ import annotations

import numpy as np

from .._errors import InvalidArgumentError, SerializationError, StateClosedError
from . import _tree_codec as codec
from ._tree_writes import as_bits


def _leaves_at(state, name, step, host: bool):
    """``(TreeInfo, step, leaves)`` of tree ``name`` at ``step`` (None: the last)."""
    with state._lock:
        if state._closed:
            raise StateClosedError(f"the state at {state.path!r} is stopped")
        state._raise_journal_failure()
        t = state._tree(name)
        step, epoch = state._step_epoch(t, step)
        ids = t.page_ids
        if not ids.size or int(state._table.epoch[ids].max()) <= epoch:  # unchanged since: read the pages
            src = state
        else:
            from ._lifecycle import replay_to_epoch

            src = replay_to_epoch(state, epoch)
        leaves = [src.query_page(pid) for pid in ids.tolist()]
    if host:
        leaves = [np.asarray(x) for x in leaves]
    return t, step, leaves


def load_tree(state, name, step=None, *, like=None):
    """The tree ``name`` as it was journaled at ``step`` (default: its last step), bit for bit.

    Works on a live state, after :func:`mmsb_stop` + :func:`mmsb_open`, and on a read-only
    snapshot from :func:`replay_to_epoch` (steps up to the snapshot's epoch). The structure
    comes from the log: containers are rebuilt as their own classes where those classes are
    already imported and registered as pytrees (dicts, lists, tuples, namedtuples such as
    optax states, flax ``struct`` dataclasses, ``nnx.State``), otherwise as dicts with the
    same keys; pass ``like=template`` to get exactly the template's types back. Leaves are
    ``jax.Array``s of the journaled shapes and dtypes.

    Args:
      state: an :class:`MMSBState` or a snapshot.
      name: the tree's name.
      step: a journaled step (see :func:`tree_steps`), or None for the last.
      like: a pytree with the tree's leaf paths, shapes and dtypes (values ignored), whose
        structure the result takes.

    Raises:
      InvalidArgumentError: no tree ``name``, or no such step.
      InvalidDeltaError: ``like`` differs in a leaf path, shape or dtype (the path is named).
      SerializationError: the step's epochs were compacted out of the log.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> _ = mmsb.save_tree(state, "p", {"w": jnp.zeros(2), "n": jnp.int32(0)}, step=0)
      >>> _ = mmsb.save_tree(state, "p", {"w": jnp.ones(2), "n": jnp.int32(1)}, step=1)
      >>> mmsb.load_tree(state, "p", step=0)["w"].tolist()
      [0.0, 0.0]
      >>> mmsb.mmsb_stop(state)
    """
    t, _, leaves = _leaves_at(state, name, step, host=False)
    if like is not None:
        td = codec.check_like(t.spec, like, t.name)
        return codec.tu.tree_unflatten(td, leaves)
    return codec.unflatten(t.spec, leaves)


def tree_diff(state, name, step_a, step_b) -> dict:
    """Per leaf path, what changed from ``step_a`` to ``step_b`` of tree ``name``.

    Returns ``{path: {"shape", "dtype", "changed", "max_abs", "norm"}}``: ``changed`` counts
    the elements whose bits differ (so NaN -> NaN is unchanged and 0.0 -> -0.0 is a change),
    ``max_abs`` and ``norm`` are the largest absolute change and the L2 norm of the change,
    in float64 over the changed elements (0.0 when nothing changed; NaN when a change
    involves a NaN or infinity).

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> _ = mmsb.save_tree(state, "p", {"w": jnp.zeros(3)}, step=0)
      >>> _ = mmsb.save_tree(state, "p", {"w": jnp.array([0., 3., 4.])}, step=1)
      >>> mmsb.tree_diff(state, "p", 0, 1)["['w']"]
      {'shape': (3,), 'dtype': 'float32', 'changed': 2, 'max_abs': 4.0, 'norm': 5.0}
      >>> mmsb.mmsb_stop(state)
    """
    t, _, a = _leaves_at(state, name, step_a, host=True)
    _, _, b = _leaves_at(state, name, step_b, host=True)
    out = {}
    for leaf, x, y in zip(t.spec.leaves, a, b):
        ne = as_bits(x) != as_bits(y)
        n = int(np.count_nonzero(ne))
        if n:
            with np.errstate(all="ignore"):
                d = y.reshape(-1)[ne].astype(np.float64) - x.reshape(-1)[ne].astype(np.float64)
                max_abs, norm = float(np.max(np.abs(d))), float(np.sqrt(np.sum(d * d)))
        else:
            max_abs = norm = 0.0
        out[leaf.path] = {"shape": leaf.shape, "dtype": leaf.dtype.name, "changed": n, "max_abs": max_abs,
                          "norm": norm}
    return out


def any_nonfinite(tree) -> bool:
    """Whether any floating-point leaf of ``tree`` holds a NaN or an infinity (a ``find_step`` predicate).

    Example:
      >>> import numpy as np
      >>> any_nonfinite({"w": np.ones(2, np.float32), "n": np.int32(3)}), any_nonfinite([np.float32("nan")])
      (False, True)
    """
    for x in codec.tu.tree_leaves(tree):
        x = np.asarray(x)
        if (x.dtype.kind == "f" or x.dtype.name == "bfloat16") and not np.isfinite(x.astype(np.float32)).all():
            return True
    return False


def find_step(state, name, predicate):
    """The first step of tree ``name`` whose tree satisfies ``predicate``, by bisection.

    ``predicate(tree) -> bool`` gets the tree as :func:`load_tree` returns it. The search
    assumes that once the predicate holds it keeps holding (as a NaN that entered training
    stays), and costs O(log steps) restores (:func:`load_tree` calls), not a scan; if the
    predicate can turn false again, the result is *a* step where it turns true. Returns the
    step, or None when even the last step does not satisfy it. Steps whose epochs
    :func:`~mmsb_jax.compact_log` removed cannot be restored: the search covers the steps
    from the first one that can.

    Raises:
      InvalidArgumentError: ``predicate`` is not callable, or no tree is called ``name``.
      SerializationError: not even the last step can be restored.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> for s, v in enumerate([1.0, 2.0, float("nan"), float("nan")]):
      ...     _ = mmsb.save_tree(state, "p", {"loss": jnp.float32(v)}, step=s)
      >>> mmsb.find_step(state, "p", lambda tree: bool(jnp.isnan(tree["loss"])))
      2
      >>> mmsb.mmsb_stop(state)
    """
    if not callable(predicate):
        raise InvalidArgumentError(f"predicate={predicate!r:.80} is not callable; find_step calls predicate(tree) -> bool")
    steps = [s for s, _ in state.tree_steps(name)]
    holds = lambda s: bool(predicate(load_tree(state, name, s)))  # noqa: E731
    if not holds(steps[-1]):
        return None
    lo, hi = _first_restorable(state, name, steps), len(steps) - 1  # invariant: the predicate holds at steps[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(steps[mid]):
            hi = mid
        else:
            lo = mid + 1
    return steps[lo]


def _first_restorable(state, name, steps) -> int:
    """The index of the first step that can be restored (compaction removes a prefix of the
    log, so the restorable steps are a suffix; the last one is)."""
    def restorable(i):
        try:
            load_tree(state, name, steps[i])
            return True
        except SerializationError:
            return False

    if restorable(0):
        return 0
    lo, hi = 1, len(steps) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if restorable(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
