"""The tree journal as functions (``mmsb.save_tree(state, ...)``), next to the seed-style ones.

``save_tree`` / ``tree_steps`` / ``tree_ring`` forward to the :class:`MMSBState` methods of the
same name; ``load_tree``, ``tree_diff`` and ``find_step`` live in :mod:`._tree_history`.
"""

from __future__ import annotations

from ._state import MMSBState


def save_tree(state: MMSBState, name: str, tree, *, step=None, location: str = "cpu") -> int:
    """Journal a pytree as one step of the tree ``name``: ONE atomic epoch, tagged with ``step``.

    ``tree`` is any pytree of arrays (``jax.Array`` or numpy; bool, integer, float and
    bfloat16 leaves, scalars included; 64-bit ones with ``jax_enable_x64``): dicts, lists,
    tuples, namedtuples and dataclass pytrees such as optax states, flax ``struct`` dataclasses
    and ``nnx.State``. The first save creates one page per leaf and logs the structure and leaf
    paths, so a reopened state knows them without a template. Each later save writes only what
    changed, compared bit for bit: nothing for an unchanged leaf, its raw bytes for a fully
    changed one, the changed rows (or elements) of a sparsely changed one (an embedding table
    whose 256 touched rows cost 256 rows).

    The values are copied to host memory before returning; comparing and writing run on a
    background thread (every other operation on the state waits for them), except under
    ``fsync="always"``, where the step is durable when ``save_tree`` returns.

    Args:
      state: a live state.
      name: the tree's name (a non-empty str).
      tree: the pytree; after the first save it must keep its structure, leaf shapes and dtypes.
      step: the step number (an int greater than the tree's last step); None: last step + 1
        (0 for the first).
      location: where a new tree's pages live (``"cpu"`` / ``"gpu"``).

    Returns:
      the epoch of this step.

    Raises:
      InvalidArgumentError: a leaf that is not an array (names its path), an unsupported dtype,
        a changed structure, or a step not after the last one.
      InvalidDeltaError: a leaf whose shape or dtype changed (names its path).
      In every case nothing changes (no epoch, nothing logged).

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> opt = {"params": {"w": jnp.zeros((2, 3))}, "count": jnp.int32(0)}
      >>> mmsb.save_tree(state, "train", opt, step=0)
      1
      >>> mmsb.save_tree(state, "train", {"params": {"w": jnp.ones((2, 3))}, "count": jnp.int32(1)}, step=1)
      2
      >>> mmsb.tree_steps(state, "train")
      [(0, 1), (1, 2)]
      >>> mmsb.mmsb_stop(state)
    """
    return state.save_tree(name, tree, step=step, location=location)


def tree_steps(state, name: str) -> list[tuple[int, int]]:
    """``[(step, epoch), ...]``: every journaled step of tree ``name`` and the epoch it is.

    Raises:
      InvalidArgumentError: no tree ``name``.

    Example:
      >>> import numpy as np, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> _ = mmsb.create_page(state, size=2)          # epoch 1: something else
      >>> _ = mmsb.save_tree(state, "t", {"x": np.zeros(2, np.float32)}, step=10)
      >>> mmsb.tree_steps(state, "t")
      [(10, 2)]
      >>> mmsb.mmsb_stop(state)
    """
    return state.tree_steps(name)


def tree_ring(state: MMSBState, name: str, like_tree, *, steps: int, location: str = "cpu", device=None):
    """A device ring for ``steps`` steps of tree ``name``, for :func:`record_tree` inside ``jit``.

    ``like_tree`` gives the structure, leaf shapes and dtypes (arrays or
    ``jax.ShapeDtypeStruct``s; leaves of mixed dtypes share one ring); a tree already journaled
    under ``name`` must match it. The ring holds ``steps`` copies of the tree on ``device``
    (default: JAX's default device). ``epoch, ring = state.drain_ring(ring)`` journals every
    recorded step as its own epoch tagged with its step (so a step inside a ``lax.scan`` chunk
    can be loaded back), the first one creating the tree. It returns the last epoch and an
    empty ring to go on with: a second set of buffers while the background writer reads the
    drained one (the two alternate), so the next chunk starts at once; always continue with the
    returned ring, as after donating. A drain compiles nothing, whatever the count. Donate the
    ring (``jax.jit(step, donate_argnums=...)``) so a step writes its slot in place;
    ``ring.overflowed`` tells the loop when to drain.

    Raises:
      InvalidArgumentError: a leaf that is not an array, an unsupported dtype, ``steps`` not a
        positive int, or a structure differing from the journaled tree ``name``.

    Example:
      >>> import jax, jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> tree = {"w": jnp.zeros(2), "count": jnp.int32(0)}
      >>> ring = mmsb.tree_ring(state, "train", tree, steps=8)
      >>> @jax.jit
      ... def chunk(ring, tree):
      ...     def body(carry, i):
      ...         ring, tree = carry
      ...         tree = {"w": tree["w"] + 1.0, "count": tree["count"] + 1}
      ...         return (mmsb.record_tree(ring, tree, i), tree), None
      ...     return jax.lax.scan(body, (ring, tree), jnp.arange(4))[0]
      >>> ring, tree = chunk(ring, tree)
      >>> epoch, ring = state.drain_ring(ring)        # 4 epochs, one per step
      >>> [s for s, _ in mmsb.tree_steps(state, "train")]
      [0, 1, 2, 3]
      >>> mmsb.load_tree(state, "train", step=1)["w"].tolist()
      [2.0, 2.0]
      >>> mmsb.mmsb_stop(state)
    """
    return state.tree_ring(name, like_tree, steps=steps, location=location, device=device)
