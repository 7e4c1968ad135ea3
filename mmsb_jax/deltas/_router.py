"""The delta router: many deltas into one pool, deterministically.

Two forms:

* :func:`route_pool` — pure and jittable: a batch of deltas stacked along a leading axis
  (any kind), applied to pool slots in order with ``lax.scan``. The result equals applying
  them one by one, bit for bit, whatever the duplicates. Use it inside ``jit`` / ``lax.scan``
  training loops.
* :func:`route_sparse` / :func:`scatter_unique` — the fast path for batches of sparse deltas:
  repeated targets are resolved (the last entry in batch order wins) *before* the scatter, so
  every target is written exactly once and XLA's unspecified order for duplicate scatter
  indices never matters. The shell resolves them on the host (:func:`sparse_rows_winners`); the
  jittable :func:`route_sparse` resolves them with a stable sort.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._delta import DELTA_TYPES, apply_delta, bit_equal
from .._errors import InvalidDeltaError
from ..pages import moved, pool_jit, unmoved

Array = Any


def route_pool(pool: Array, slots: Array, deltas) -> Array:
    """Apply stacked ``deltas[i]`` to ``pool[slots[i]]`` in order ``i = 0, 1, ...`` (pure).

    Args:
      pool: ``(capacity, *page_shape)`` array.
      slots: int ``(n,)`` slot of each delta (repeats allowed: applied in order).
      deltas: one :class:`Delta` whose leaves have a leading axis ``n`` (e.g. built with
        ``jax.tree.map(lambda *x: jnp.stack(x), *list_of_deltas)``).

    Returns:
      the new pool; equal, bit for bit, to applying the deltas one by one.

    Example:
      >>> import jax, jax.numpy as jnp, mmsb_jax as mmsb
      >>> pool = jnp.zeros((2, 3))
      >>> d = mmsb.SparseDelta(jnp.array([[0], [0]]), jnp.array([[1.], [2.]]), (3,))
      >>> mmsb.route_pool(pool, jnp.array([1, 1]), d)[1].tolist()
      [2.0, 0.0, 0.0]
    """
    if not isinstance(deltas, DELTA_TYPES):
        raise InvalidDeltaError(f"route_pool needs a stacked Delta, got {type(deltas).__name__}")

    dtype = jnp.asarray(pool).dtype

    def step(p, xs):  # (the pool moves as bits: bfloat16 NaN payloads stay)
        slot, d = xs
        page = unmoved(jax.lax.dynamic_index_in_dim(p, slot, keepdims=False), dtype)
        return jax.lax.dynamic_update_index_in_dim(p, moved(apply_delta(page, d)), slot, 0), None

    pool, _ = jax.lax.scan(step, moved(jnp.asarray(pool)), (jnp.asarray(slots, jnp.int32), deltas))
    return unmoved(pool, dtype)


def _flat_targets(slots, indices, page_elems: int, xp):
    slots = slots.astype(xp.int64) if xp is np else slots.astype(jnp.int32)
    return (slots[:, None] * page_elems + indices).reshape(-1)


def route_sparse(pool: Array, slots: Array, indices: Array, values: Array) -> Array:
    """Scatter a batch of equal-length sparse deltas into ``pool`` (pure, jittable).

    ``pool[slots[i]].flat[indices[i, j]] = values[i, j]``; where a target repeats, the entry
    latest in batch order (row, then column) wins, resolved with a stable sort. Indices outside
    the page are dropped. Equal to :func:`route_pool` on the same deltas.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> pool = jnp.zeros((2, 4))
      >>> out = mmsb.route_sparse(pool, jnp.array([0, 0]), jnp.array([[1], [1]]), jnp.array([[5.], [6.]]))
      >>> out[0].tolist()
      [0.0, 6.0, 0.0, 0.0]
    """
    page_shape = pool.shape[1:]
    page_elems = int(np.prod(page_shape, dtype=np.int64))
    indices = jnp.asarray(indices, jnp.int32)
    valid = (indices >= 0) & (indices < page_elems)
    if pool.size >= 2**31:  # flat int32 targets would wrap: sort by (slot, index, position)
        n, k = indices.shape
        rows = pool.reshape(pool.shape[0], page_elems)
        sl = jnp.where(valid, jnp.broadcast_to(jnp.asarray(slots, jnp.int32)[:, None], (n, k)), pool.shape[0])
        ss, si, sp = jax.lax.sort((sl.reshape(-1), indices.reshape(-1), jnp.arange(n * k, dtype=jnp.int32)), num_keys=3)
        last = jnp.concatenate([(ss[1:] != ss[:-1]) | (si[1:] != si[:-1]), jnp.ones((1,), jnp.bool_)])
        win_v = moved(jnp.asarray(values).astype(pool.dtype)).reshape(-1)[sp]
        out = moved(rows).at[jnp.where(last, ss, pool.shape[0]), si].set(win_v, mode="drop")
        return unmoved(out, pool.dtype).reshape(pool.shape)
    flat = pool.reshape(-1)
    targets = _flat_targets(jnp.asarray(slots), indices, page_elems, jnp)
    targets = jnp.where(valid.reshape(-1), targets, flat.shape[0])
    m = targets.shape[0]
    pos = jnp.arange(m, dtype=jnp.int32)
    # Sort by (target, position): the last entry of each run of equal targets is the winner.
    st, sp = jax.lax.sort((targets, pos), num_keys=2)
    last = jnp.concatenate([st[1:] != st[:-1], jnp.ones((1,), jnp.bool_)])
    win_t = jnp.where(last, st, flat.shape[0])
    win_v = moved(jnp.asarray(values).astype(flat.dtype)).reshape(-1)[sp]
    return unmoved(moved(flat).at[win_t].set(win_v, mode="drop"), flat.dtype).reshape(pool.shape)


def pad_rows(blocks: list, k: int, fill) -> np.ndarray:
    """Concatenate row blocks (each ``(n_i, k_i)``, or 1-D for one row) into ``(sum n_i, k)``,
    padding short rows by repeating their last entry (for sparse deltas a no-op: the same
    value to the same index, still last); an empty row becomes ``fill``."""
    out = []
    for b in blocks:
        b = np.asarray(b)
        b = b.reshape(1, -1) if b.ndim == 1 else b
        if b.shape[1] == k:
            out.append(b)
        elif b.shape[1] == 0:
            out.append(np.full((b.shape[0], k), fill, b.dtype))
        else:
            out.append(np.pad(b, [(0, 0), (0, k - b.shape[1])], mode="edge"))
    return np.concatenate(out)


def last_writers(targets: np.ndarray, *, bound: int | None = None,
                 scratch: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """Host-side last-writer resolution: ``(positions, winners)``, the positions of the entries
    no later entry repeats and their targets, both in ascending order of target (so a scatter
    of the winners walks memory in order); ``None`` if every target is unique.

    ``bound``: a known upper bound of the (non-negative) targets (skips a pass to find it);
    ``scratch``: ``targets`` is an int64 temporary of the caller's that may be overwritten.
    One numpy (SIMD) in-place sort of packed ``(target, position)`` keys, O(m log m): on the
    CPU here it was measured faster than a linear stamp pass (``stamp[target] = position``)
    and than a device scatter-max of positions, whose random accesses into a pool-sized array
    cost more than the sort (docs/performance.md).

    Example:
      >>> pos, win = last_writers(np.array([7, 3, 7]))
      >>> pos.tolist(), win.tolist()
      ([1, 2], [3, 7])
    """
    m = targets.shape[0]
    if m <= 1:
        return None
    pos_bits = max(1, int(m - 1).bit_length())
    hi = bound if bound is not None else int(targets.max())
    if hi >= (1 << (62 - pos_bits)) or (bound is None and int(targets.min()) < 0):
        order = np.lexsort((np.arange(m), targets))
        st = targets[order]
    else:
        key = targets if scratch and targets.dtype == np.int64 else targets.astype(np.int64)  # sorted in place
        np.left_shift(key, pos_bits, out=key)
        key |= np.arange(m, dtype=np.int64)
        key.sort()
        order = key & ((1 << pos_bits) - 1)
        np.right_shift(key, pos_bits, out=key)
        st = key
    last = np.empty(m, bool)
    np.not_equal(st[1:], st[:-1], out=last[:-1])
    last[-1] = True
    if last.all():
        return None
    return order[last], st[last]


def _row_repeats(indices: np.ndarray, bound: int | None = None) -> np.ndarray:
    """Whether each row of ``indices`` (n, k) repeats an index: for short rows by comparing
    the columns at each distance ``d`` as one block (measured 3x faster than pair by pair, and
    than numpy's per-row sort, up to k = 16), else by a row sort. ``bound``: the indices are
    known to lie in ``[0, bound)``."""
    n, k = indices.shape
    if k > 16:
        s = np.sort(indices, axis=1)
        return (s[:, 1:] == s[:, :-1]).any(axis=1)
    if bound is not None:
        small = bound <= 1 << 15
    else:
        small = indices.size and int(indices.max()) < 1 << 15 and int(indices.min()) >= -(1 << 15)
    cols = np.ascontiguousarray(indices.T, dtype=np.int16 if small else indices.dtype)
    out = np.zeros(n, bool)
    for d in range(1, k):
        out |= (cols[d:] == cols[:-d]).any(axis=0)
    return out


def repeated_rows(slots: np.ndarray, capacity: int) -> np.ndarray:
    """Which rows name a slot (in ``[0, capacity)``) that another row of the batch names too.

    Example:
      >>> repeated_rows(np.array([2, 0, 2]), 3).tolist()
      [True, False, True]
    """
    return np.bincount(slots, minlength=capacity)[slots] > 1


def sparse_rows_winners(slots: np.ndarray, indices: np.ndarray, page_elems: int, capacity: int,
                        repeated: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Host-side last-writer resolution for sparse rows ``(slots[i], indices[i, :])``.

    Returns ``(positions, targets)``: the flat positions (into the ``n * k`` entries) of the
    winning entries and their flat targets ``slot * page_elems + index``, or ``None`` when
    every target is already unique. Cheap checks first: a page that appears once in the batch
    can only repeat targets within its own row (a row check of those rows finds that); only
    rows of repeated pages (and rows with repeats of their own) go through the (target,
    position) sort, whose winners come out in target order. ``repeated``: the rows whose page
    appears more than once (:func:`repeated_rows`), if the caller has it.

    Example:
      >>> pos, tgt = sparse_rows_winners(np.array([0, 1, 0]), np.array([[1], [1], [1]]), 4, 2)
      >>> pos.tolist(), tgt.tolist()
      ([1, 2], [5, 1])
    """
    n, k = indices.shape
    if n == 0 or k == 0:
        return None
    sel = repeated_rows(slots, capacity) if repeated is None else repeated.copy()
    single = np.flatnonzero(~sel)
    if single.size and k > 1:
        sel[single[_row_repeats(indices if single.size == n else indices[single], page_elems)]] = True
    if not sel.any():
        return None
    bound = capacity * page_elems
    if sel.all():
        targets = slots.astype(np.int64)[:, None] * page_elems + indices
        return last_writers(targets.reshape(-1), bound=bound, scratch=True)
    rows = np.flatnonzero(sel)
    targets = (slots[rows, None].astype(np.int64) * page_elems + indices[rows]).reshape(-1)
    sub = last_writers(targets, bound=bound, scratch=True)
    if sub is None:  # repeated pages, but no repeated target
        return None
    rest_rows = np.flatnonzero(~sel)
    rest = (rest_rows[:, None] * k + np.arange(k)).reshape(-1)
    rest_targets = (slots[rest_rows, None].astype(np.int64) * page_elems + indices[rest_rows]).reshape(-1)
    entries = (rows[:, None] * k + np.arange(k)).reshape(-1)
    return np.concatenate([rest, entries[sub[0]]]), np.concatenate([rest_targets, sub[1]])


@pool_jit
def scatter_unique(pool, targets, values):
    """``pool.flat[targets] = values`` for targets known to be unique (out-of-range: dropped)."""
    flat = moved(pool.reshape(-1))
    out = flat.at[targets].set(moved(values.astype(pool.dtype)), mode="drop", unique_indices=True)
    return unmoved(out, pool.dtype).reshape(pool.shape)


# --------------------------------------------------------------------------- page reads and writes
@pool_jit
def write_diff(pool, slot, new):
    """Write ``new`` into ``pool[slot]``; return the pool and the bitwise change mask, flat
    and packed 8 per byte (``np.packbits`` order) to keep the device-to-host copy small."""
    old = jax.lax.dynamic_index_in_dim(pool, slot, keepdims=False)
    mask = ~bit_equal(old, new)
    out = jax.lax.dynamic_update_index_in_dim(moved(pool), moved(new), slot, 0)
    return unmoved(out, pool.dtype), jnp.packbits(mask.reshape(-1))


@pool_jit
def write_page(pool, slot, new):
    """``pool[slot] = new`` (donated: in place)."""
    out = jax.lax.dynamic_update_index_in_dim(moved(pool), moved(new.astype(pool.dtype)), slot, 0)
    return unmoved(out, pool.dtype)


def host_change_mask(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The flat bitwise change mask of two host pages of one dtype: what :func:`write_diff`
    computes on the device (NaN equals an identical NaN; -0.0 differs from 0.0).

    Example:
      >>> host_change_mask(np.array([0.0, 1.0], np.float32), np.array([-0.0, 1.0], np.float32)).tolist()
      [True, False]
    """
    if old.dtype == np.bool_:
        return (old != new).reshape(-1)
    bits = np.dtype(f"u{old.dtype.itemsize}")
    return (old.view(bits) != new.view(bits)).reshape(-1)


@pool_jit
def apply_at(pool, slot, delta):
    page = jax.lax.dynamic_index_in_dim(pool, slot, keepdims=False)
    out = jax.lax.dynamic_update_index_in_dim(moved(pool), moved(apply_delta(page, delta)), slot, 0)
    return unmoved(out, pool.dtype)


@jax.jit
def read_slot(pool, slot):
    return jax.lax.dynamic_index_in_dim(pool, slot, keepdims=False)


@pool_jit
def apply_rows(pool, slots, deltas):
    """Apply stacked ``deltas[i]`` to ``pool[slots[i]]`` for distinct slots, in one pass;
    slots past the pool's end are padding and change nothing."""
    pages = unmoved(jnp.take(moved(pool), slots, axis=0, mode="clip"), pool.dtype)
    new = jax.vmap(apply_delta)(pages, deltas)
    return unmoved(moved(pool).at[slots].set(moved(new), mode="drop", unique_indices=True), pool.dtype)


@pool_jit
def write_rows(pool, slots, rows):
    """``pool[slots[i]] = rows[i]`` for distinct slots; slots past the end are padding."""
    out = moved(pool).at[slots].set(moved(rows.astype(pool.dtype)), mode="drop", unique_indices=True)
    return unmoved(out, pool.dtype)


@pool_jit
def write_page_rows(pool, slot, rows, values):
    """``pool[slot][rows[i]] = values[i]`` along the page's leading axis, for distinct rows;
    rows past the page's end are padding (dropped): a write of many rows of one large page
    without taking the page off the device (e.g. a replayed tail of tree steps)."""
    out = moved(pool).at[slot, rows].set(moved(values.astype(pool.dtype)), mode="drop", unique_indices=True)
    return unmoved(out, pool.dtype)


@pool_jit
def zero_slots(pool, slots):
    """Zero ``pool[slots]``; slots past the end are padding (they may repeat)."""
    bits = moved(pool)  # (a bfloat16 scatter would quiet the NaN payloads of every other slot)
    zeros = jnp.zeros((slots.shape[0],) + pool.shape[1:], bits.dtype)
    return unmoved(bits.at[slots].set(zeros, mode="drop"), pool.dtype)
