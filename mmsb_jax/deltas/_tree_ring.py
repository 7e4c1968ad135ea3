"""A device-side journal of whole pytrees for ``jit`` / ``lax.scan``: K steps of one tree.

:func:`record_tree` (pure, jittable) writes a tree (leaves of any dtypes, scalars included)
into the next of the ring's ``K`` slots and tags it with its step; the host later drains the
ring (``state.drain_ring(ring)``), which turns each recorded step into its own epoch and
returns an empty ring to go on with (another set of buffers while the drained one is read).
The ring is a registered pytree: carry it through ``lax.scan``, pass it to ``jit`` and donate it
(``donate_argnums``) so each step writes its slot in place instead of copying the ring.
``ring.overflowed`` is a traced bool a loop can test (``lax.cond``, ``checkify``); a drain of
an overflowed ring raises ``RingOverflowError`` and applies nothing. The ring itself is made
by ``mmsb_jax.tree_ring(state, name, like_tree, steps=K)``, which knows the tree's journal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checks import is_int
from .._errors import InvalidArgumentError
from ._delta import _static
from ..pages import moved, unmoved

Array = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TreeRing:
    """Up to ``capacity`` recorded steps of the tree ``name``.

    ``buffers[i]`` holds leaf ``i`` of every slot (``(capacity, *leaf.shape)``, the leaf's
    dtype), ``steps`` the step number of each slot (int32), ``count`` how many steps were
    recorded since the last drain (it keeps counting past ``capacity``, so an overflow is
    seen, never hidden). ``name``, ``structure`` (the tree's journaled structure, JSON) and
    ``treedef`` are static.
    """

    buffers: tuple
    steps: Array
    count: Array
    name: str = _static()
    structure: str = _static()
    treedef: Any = _static()

    @property
    def capacity(self) -> int:
        return int(self.steps.shape[0])

    @property
    def overflowed(self):
        """Whether more steps were recorded than the ring holds (a bool array; works traced)."""
        return self.count > self.capacity

    def leaf_paths(self) -> list[str]:
        return [leaf["path"] for leaf in json.loads(self.structure)["leaves"]]


def empty_tree_ring(name: str, structure: str, treedef, shapes, dtypes, capacity: int, device=None) -> TreeRing:
    """A zeroed ring for ``capacity`` steps of leaves of ``shapes`` / ``dtypes`` (host side)."""
    if not is_int(capacity) or capacity <= 0:
        raise InvalidArgumentError(f"steps={capacity!r} must be a positive int (the ring's capacity)")
    if capacity >= 2**31:
        raise InvalidArgumentError(f"steps={capacity} must be < 2**31")
    capacity = int(capacity)
    with jax.default_device(device) if device is not None else contextlib.nullcontext():
        buffers = tuple(jnp.zeros((capacity, *s), d) for s, d in zip(shapes, dtypes))
        steps = jnp.zeros((capacity,), jnp.int32)
        count = jnp.zeros((), jnp.int32)
    return TreeRing(buffers, steps, count, name, structure, treedef)


def record_tree(ring: TreeRing, tree, step) -> TreeRing:
    """Record ``tree`` as step ``step`` in the ring's next slot (pure; use inside ``jit`` / ``lax.scan``).

    Args:
      ring: a :class:`TreeRing` from ``mmsb_jax.tree_ring``.
      tree: a pytree with the ring's structure, leaf shapes and dtypes.
      step: an integer scalar in int32's range (``-2**31 <= step < 2**31``), concrete or
        traced (a traced step of a wider dtype, uint32 or 64-bit, is refused rather than
        wrapped: cast it with ``step.astype(jnp.int32)``); a drain checks that steps increase.

    Returns:
      the ring with the step written (in place when the ring is donated or carried by
      ``lax.scan``) and ``count`` one higher.

    Raises (while tracing):
      InvalidArgumentError: the tree's structure, a leaf's shape or dtype, or ``step``'s type
        does not fit the ring; the message names the leaf path.

    Example:
      >>> import jax, jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> tree = {"w": jnp.zeros(3), "count": jnp.int32(0)}
      >>> ring = mmsb.tree_ring(state, "train", tree, steps=4)
      >>> ring = jax.jit(mmsb.record_tree)(ring, tree, 0)
      >>> int(ring.count), bool(ring.overflowed)
      (1, False)
      >>> mmsb.mmsb_stop(state)
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if treedef != ring.treedef:
        got = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        want = ring.leaf_paths()
        where = next((f"leaf {i} is {a}, the ring has {b}" for i, (a, b) in enumerate(zip(got, want)) if a != b),
                     f"{len(got)} leaves vs {len(want)} in the ring")
        raise InvalidArgumentError(f"record_tree: the tree does not have the structure of ring {ring.name!r}: {where}")
    paths = None
    for i, (leaf, buf) in enumerate(zip(leaves, ring.buffers)):
        shape, dtype = jnp.shape(leaf), getattr(leaf, "dtype", None)
        if dtype is None or tuple(shape) != buf.shape[1:] or jnp.dtype(dtype) != buf.dtype:
            paths = paths or ring.leaf_paths()
            raise InvalidArgumentError(
                f"record_tree: leaf {paths[i]} of ring {ring.name!r} is "
                f"{'a ' + type(leaf).__name__ if dtype is None else str(jnp.dtype(dtype)) + str(list(shape))}; "
                f"the ring holds {buf.dtype}{list(buf.shape[1:])}"
            )
    step = _ring_step(step)
    pos = ring.count % ring.capacity  # past the capacity it wraps: the drain reports the overflow
    buffers = tuple(unmoved(lax.dynamic_update_index_in_dim(moved(b), moved(jnp.asarray(x)), pos, 0), b.dtype)
                    for x, b in zip(leaves, ring.buffers))  # (bits: bfloat16 NaN payloads stay)
    steps = lax.dynamic_update_index_in_dim(ring.steps, step.astype(jnp.int32), pos, 0)
    return dataclasses.replace(ring, buffers=buffers, steps=steps, count=ring.count + jnp.int32(1))


def _ring_step(step):
    """``step`` as the int32 a ring stores, or InvalidArgumentError: an integer scalar, a
    concrete one in int32's range, a traced one of a dtype that fits (wider: cast it first)."""
    if isinstance(step, jax.core.Tracer):
        dtype, shape = jnp.dtype(step.dtype), tuple(step.shape)
        if shape != () or not jnp.issubdtype(dtype, jnp.integer):
            raise InvalidArgumentError(f"record_tree: step must be an integer scalar, got {dtype}{list(shape)}")
        if dtype.itemsize > 4 or dtype == jnp.uint32:
            raise InvalidArgumentError(
                f"record_tree: a traced step of dtype {dtype} may not fit the ring's int32 steps (it would wrap); "
                "cast it in the loop: step.astype(jnp.int32)")
        return step.astype(jnp.int32)
    if type(step) is int:
        value, dtype, shape = step, None, ()
    else:
        try:
            a = np.asarray(step)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidArgumentError(f"record_tree: step={step!r:.80} is not an integer scalar ({e})") from None
        dtype, shape = a.dtype, a.shape
        if shape != () or dtype.kind not in "iu":
            raise InvalidArgumentError(
                f"record_tree: step must be an integer scalar, got {step!r:.80} ({dtype}{list(shape)})")
        value = int(a)
    if not -(2**31) <= value < 2**31:
        raise InvalidArgumentError(f"record_tree: step={value} does not fit the ring's int32 steps "
                                   f"(-2**31 <= step < 2**31); save_tree takes int64 steps")
    return jnp.asarray(value, jnp.int32)


_STOCK = 64


@jax.jit
def _zero_counts(count):
    # on the count's device (one compiled shape for every ring), many at once: one dispatch per 64 drains
    return tuple(count * 0 for _ in range(_STOCK))


def _zero_count(ring: TreeRing, zeros: dict):
    """A fresh zero step count on the ring's device from the caller's stock ``zeros`` (by
    sharding; each its own buffer, since a ring may be donated), refilled 64 at a time."""
    key = ring.count.sharding
    stock = zeros.get(key)
    if not stock:
        stock = zeros[key] = list(_zero_counts(ring.count))
    return stock.pop()


def ring_steps(ring: TreeRing) -> tuple[int, np.ndarray]:
    """Host side: ``(count, steps of the recorded slots as int64)`` (zero-copy views on the CPU)."""
    count = int(np.asarray(ring.count))
    return count, np.asarray(np.asarray(ring.steps)[: min(count, ring.capacity)], np.int64)


@jax.jit
def _fresh(buffers, steps):
    return tuple(jnp.zeros_like(b) for b in buffers), jnp.zeros_like(steps)


def tree_ring_swapped(ring: TreeRing, spares: list, zeros: dict) -> TreeRing:
    """A ring of the same kind as ``ring`` with nothing recorded, for the loop to go on with
    while ``ring``'s buffers are read (host side, at a drain): a pair ``(buffers, steps)`` from
    ``spares`` (rings drained earlier and fully read), or fresh zeros. ``zeros``: a stock of
    zero step counts (see :func:`_zero_count`)."""
    spare = None
    while spares and spare is None:
        bufs, steps = spares.pop()
        if not steps.is_deleted() and not any(b.is_deleted() for b in bufs):  # not donated by a stale handle
            spare = bufs, steps
    if spare is None:
        spare = _fresh(ring.buffers, ring.steps)
    return TreeRing(tuple(spare[0]), spare[1], _zero_count(ring, zeros), ring.name, ring.structure, ring.treedef)


def spare_key(ring: TreeRing) -> tuple:
    """Rings that can stand in for one another: same tree, structure, capacity and placement."""
    return ring.name, ring.structure, ring.capacity, ring.steps.sharding
