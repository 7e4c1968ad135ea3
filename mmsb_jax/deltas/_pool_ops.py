"""The jitted arena operations of a pool, for its placement: one device, or sharded.

A pool's arena is ``(capacity, *page)``. On one device the operations are those of
:mod:`mmsb_jax.deltas._router` (in place, donated). A pool sharded over a mesh along the slot axis
(``NamedSharding(mesh, P(axes))``) gets the same operations written per shard with
``jax.shard_map``: each shard updates only the slots it owns, in place, and values read from
one slot travel as a bitwise max over the shards (all others contribute zeros), so reads and
change masks are bit-exact. (Left to XLA's partitioner, a write of one slot into a sharded
arena copied the whole arena: 222 ms instead of 40 us for a 64 MiB pool on 8 CPU devices.)

The same operations run unchanged when the mesh spans the devices of several JAX processes
(``jax.distributed``): every process launches them with the same arguments and updates its
own shards. No process then holds a whole arena; host reads of rows go through
:func:`host_rows`, which brings the rows asked for (and only those) to every process.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from ._delta import apply_delta, bit_equal
from ..pages import bucket, moved, pool_jit, unmoved
from ._router import (apply_at, apply_rows, read_slot, scatter_unique, write_diff, write_page_rows, write_rows,
                      zero_slots)


class PoolOps(NamedTuple):
    """What the shell does to an arena (each jitted; ``pool`` is donated where updated)."""

    write_diff: Any  # (pool, slot, new) -> (pool, packed change mask)
    apply_at: Any  # (pool, slot, delta) -> pool
    read_slot: Any  # (pool, slot) -> page
    apply_rows: Any  # (pool, slots, stacked deltas) -> pool; distinct slots, padding past the end
    write_rows: Any  # (pool, slots, rows) -> pool; distinct slots, padding past the end
    scatter_unique: Any  # (pool, flat targets, values) -> pool; unique targets, padding past the end
    zero_slots: Any  # (pool, slots) -> pool; padding past the end
    write_page_rows: Any  # (pool, slot, rows, values) -> pool; distinct rows of one page, padding past its end


SINGLE_DEVICE = PoolOps(write_diff, apply_at, read_slot, apply_rows, write_rows, scatter_unique, zero_slots,
                        write_page_rows)


def _as_bits(x):
    """``x`` as unsigned integers of its width (bool as uint8): max-able, bit-preserving."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jnp.unsignedinteger):
        return x
    return lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))


def _from_bits(u, dtype):
    if dtype == jnp.bool_:
        return u.astype(jnp.bool_)
    return u if u.dtype == dtype else lax.bitcast_convert_type(u, dtype)


def _from_owner(value, mine, axes):
    """The owner shard's ``value`` on every shard of ``axes``, bit for bit (inside shard_map)."""
    return _from_bits(lax.pmax(jnp.where(mine, _as_bits(value), 0), axes), value.dtype)


@functools.cache
def sharded_ops(sharding) -> PoolOps:
    """The arena operations for pools placed with ``sharding`` (a ``NamedSharding`` that splits
    axis 0 over every device of its mesh)."""
    mesh = sharding.mesh
    axes = tuple(mesh.axis_names)
    pool_spec = P(axes)

    def owned(p, slot):
        """This shard's row for global ``slot`` (clipped) and whether the shard owns it."""
        rows = p.shape[0]
        local = slot - lax.axis_index(axes) * rows
        mine = (local >= 0) & (local < rows)
        return jnp.clip(local, 0, rows - 1), mine

    def local_rows(p, slots):
        """``slots`` as this shard's rows; slots it does not own become distinct rows past
        its end (dropped by the scatters, which keep their unique-index promise)."""
        rows = p.shape[0]
        local = slots - lax.axis_index(axes) * rows
        mine = (local >= 0) & (local < rows)
        return jnp.where(mine, local, rows + jnp.arange(slots.shape[0], dtype=slots.dtype))

    # (every write moves bfloat16 as its bits: see mmsb_jax.pages.moved)
    def _write_diff(p, slot, new):
        row, mine = owned(p, slot)
        old = lax.dynamic_index_in_dim(p, row, keepdims=False)
        packed = jnp.packbits((~bit_equal(old, new)).reshape(-1))
        out = lax.dynamic_update_index_in_dim(moved(p), jnp.where(mine, moved(new), moved(old)), row, 0)
        return unmoved(out, p.dtype), _from_owner(packed, mine, axes)

    def _apply_at(p, slot, delta):
        row, mine = owned(p, slot)
        page = lax.dynamic_index_in_dim(p, row, keepdims=False)
        new = jnp.where(mine, moved(apply_delta(page, delta)), moved(page))
        return unmoved(lax.dynamic_update_index_in_dim(moved(p), new, row, 0), p.dtype)

    def _read_slot(p, slot):
        row, mine = owned(p, slot)
        return _from_owner(lax.dynamic_index_in_dim(p, row, keepdims=False), mine, axes)

    def _apply_rows(p, slots, deltas):
        rows = local_rows(p, slots)
        pages = unmoved(jnp.take(moved(p), rows, axis=0, mode="clip"), p.dtype)
        new = jax.vmap(apply_delta)(pages, deltas)
        return unmoved(moved(p).at[rows].set(moved(new), mode="drop", unique_indices=True), p.dtype)

    def _write_rows(p, slots, new_rows):
        out = moved(p).at[local_rows(p, slots)].set(moved(new_rows.astype(p.dtype)), mode="drop", unique_indices=True)
        return unmoved(out, p.dtype)

    def _zero_slots(p, slots):
        bits = moved(p)
        zeros = jnp.zeros((slots.shape[0],) + p.shape[1:], bits.dtype)
        return unmoved(bits.at[local_rows(p, slots)].set(zeros, mode="drop", unique_indices=True), p.dtype)

    def _scatter_unique(p, targets, values):
        size = p.size  # this shard's elements
        local = targets - lax.axis_index(axes) * size
        mine = (local >= 0) & (local < size)
        local = jnp.where(mine, local, size + jnp.arange(targets.shape[0], dtype=targets.dtype))
        flat = moved(p.reshape(-1)).at[local].set(moved(values.astype(p.dtype)), mode="drop", unique_indices=True)
        return unmoved(flat, p.dtype).reshape(p.shape)

    def _write_page_rows(p, slot, rows, values):
        row, mine = owned(p, slot)
        rows = jnp.where(mine, rows, p.shape[1])  # not this shard's page: every row is padding
        out = moved(p).at[row, rows].set(moved(values.astype(p.dtype)), mode="drop", unique_indices=True)
        return unmoved(out, p.dtype)

    def on_shards(fn, n_rest: int, out_specs, *, update: bool = True):
        mapped = jax.shard_map(fn, mesh=mesh, in_specs=(pool_spec,) + (P(),) * n_rest, out_specs=out_specs)
        return pool_jit(mapped) if update else jax.jit(mapped)

    return PoolOps(
        write_diff=on_shards(_write_diff, 2, (pool_spec, P())),
        apply_at=on_shards(_apply_at, 2, pool_spec),
        read_slot=on_shards(_read_slot, 1, P(), update=False),
        apply_rows=on_shards(_apply_rows, 2, pool_spec),
        write_rows=on_shards(_write_rows, 2, pool_spec),
        scatter_unique=on_shards(_scatter_unique, 2, pool_spec),
        zero_slots=on_shards(_zero_slots, 1, pool_spec),
        write_page_rows=on_shards(_write_page_rows, 3, pool_spec),
    )


_HOST_CHUNK_BYTES = 64 << 20  # rows brought to the host per call (bounds memory on every process)


def host_rows(array: jax.Array, rows, sharding=None) -> np.ndarray:
    """``array[rows]`` (rows of an arena, or of its propagated values) as a NumPy array.

    An array this process holds whole is read directly. One spread over the devices of several
    processes (``sharding`` is its pool's) is read with a jitted gather per chunk of rows,
    each shard contributing the rows it owns; every process must make the same call, and
    every process gets the rows.
    """
    rows = np.asarray(rows, np.int64).reshape(-1)
    if array.is_fully_addressable:  # one row: read on its device; many: the arena copied once
        if rows.size == 1:
            row = int(rows[0])
            for shard in array.addressable_shards:  # (indexing a sharded array on the devices
                # is an all-reduce of the shards' parts, which flushes subnormal floats to zero)
                start, stop, _ = shard.index[0].indices(array.shape[0]) if shard.index else (0, 1, 1)
                if start <= row < stop:
                    return np.asarray(shard.data[row - start])[None]
        return np.asarray(array)[rows]
    read = _read_rows(sharding)
    row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
    per = max(1, _HOST_CHUNK_BYTES // row_bytes)
    out = []
    for start in range(0, rows.size, per):
        chunk = rows[start : start + per]
        idx = np.zeros(bucket(chunk.size, minimum=1), np.int32)  # padding: row 0, dropped below
        idx[: chunk.size] = chunk
        out.append(np.asarray(read(array, idx))[: chunk.size])
    return np.concatenate(out) if out else np.zeros((0, *array.shape[1:]), array.dtype)


@functools.cache
def _read_rows(sharding):
    """Jitted ``(array, rows) -> array[rows]``, replicated, over ``sharding``'s mesh."""
    mesh = sharding.mesh
    axes = tuple(mesh.axis_names)

    def read(p, slots):
        n = p.shape[0]
        local = slots - lax.axis_index(axes) * n
        mine = (local >= 0) & (local < n)
        vals = unmoved(jnp.take(moved(p), jnp.clip(local, 0, n - 1), axis=0), p.dtype)
        return _from_owner(vals, mine.reshape((-1,) + (1,) * (vals.ndim - 1)), axes)

    return jax.jit(jax.shard_map(read, mesh=mesh, in_specs=(P(axes), P()), out_specs=P()))
