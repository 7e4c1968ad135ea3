"""Layer 0: page pools and the slot allocator.

All pages of one ``(shape, dtype, device)`` live in one arena array of shape
``(capacity, *shape)``. A page is a slot in that array. The allocator hands out slots from a
free list (lowest slot first, so layouts are deterministic), grows capacity geometrically, and
zeroes a slot when its page is deleted, so a reused slot reads as zeros.

Capacity is reserved on the host at once, and the device array grows lazily, on the next
access: reserving pages is pure bookkeeping (no device work), like an ``mmap`` that commits
memory on first touch.
"""

from __future__ import annotations

import functools
import heapq
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ResourceLimitError
from ._bits import moved, unmoved
from ._rowmap import RowMap

_MIN_CAPACITY = 16
_MIN_RESERVE_BYTES = 64 << 20  # a first reservation of large pages stops at this size (>= 1 page)

#: The most elements one page may hold: flat indices into a page are int32 (sparse deltas,
#: the log's SPARSE records, the router).
MAX_PAGE_ELEMS = 2**31

# XLA's CPU copy insertion copies a donated arena whole when one output aliases it and another
# output reads it (e.g. "write this page and return what changed"); region analysis proves the
# read happens before the in-place write and keeps the update in place (60 ms -> 35 us for a
# 120 MB pool). The option only affects CPU compilation.
_POOL_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def pool_jit(fn=None, **jit_kwargs):
    """``jax.jit`` for functions that update a donated pool (argument 0) in place."""
    if fn is None:
        return functools.partial(pool_jit, **jit_kwargs)
    return jax.jit(fn, donate_argnums=(0,), compiler_options=_POOL_COMPILER_OPTIONS, **jit_kwargs)


def bucket(n: int, minimum: int = 8, steps: int = 1) -> int:
    """Round ``n`` up to a power of two (at least ``minimum``) to bound recompilations; with
    ``steps`` (a power of two), to one of ``steps`` evenly spaced sizes per octave instead
    (``steps=8``: at most 12.5% padding, at most 8 compiled shapes per doubling).

    Example:
      >>> bucket(1_600_000), bucket(1_600_000, steps=8)
      (2097152, 1703936)
    """
    n = max(int(n), minimum)
    size = 1 << (n - 1).bit_length()
    if steps > 1 and size > steps:
        quantum = size // (2 * steps)
        size = -(-n // quantum) * quantum
    return size


@jax.jit
def _move_rows(arena, src, live):
    rows = jnp.take(moved(arena), src, axis=0, mode="clip")  # (bits: bfloat16 NaN payloads stay)
    keep = (jnp.arange(src.shape[0]) < live).reshape((-1,) + (1,) * (arena.ndim - 1))
    return unmoved(jnp.where(keep, rows, jnp.zeros((), rows.dtype)), arena.dtype)


def move_rows(arena, order, capacity: int):
    """A ``(capacity, *page)`` array whose row ``i`` is ``arena[order[i]]`` for
    ``i < len(order)``, zeros after (how :meth:`PagePool.relayout` moves pages).

    Example:
      >>> import jax.numpy as jnp
      >>> move_rows(jnp.array([10, 11, 12]), [2, 0], 4).tolist()
      [12, 10, 0, 0]
    """
    order = np.asarray(order, np.int64).reshape(-1)
    src = np.zeros(int(capacity), np.int32)
    src[: order.size] = order
    return _move_rows(arena, jnp.asarray(src), np.int32(order.size))


def _grow_impl(old, capacity: int):
    new = jnp.zeros((capacity,) + old.shape[1:], moved(old).dtype)
    return unmoved(jax.lax.dynamic_update_slice_in_dim(new, moved(old), 0, axis=0), old.dtype)


_grow = jax.jit(_grow_impl, static_argnames=("capacity",))


@functools.cache
def _grow_sharded(sharding):
    return jax.jit(_grow_impl, static_argnames=("capacity",), out_shardings=sharding)


@functools.cache
def _zeros_sharded(sharding, shape: tuple, dtype):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.cache
def host_memory_bytes() -> int:
    """Physical memory of this host (``sysconf``), or 2**40 where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def device_memory_bytes(device) -> int:
    """Memory of one device: the host's for a CPU device, else its allocator's ``bytes_limit``."""
    if device.platform != "cpu":
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 - backends without memory stats
            limit = None
        if limit:
            return int(limit)
    return host_memory_bytes()


class MemoryBudget:
    """The bytes the pools on one placement may reserve together (the memory of its devices).

    Pools claim bytes when their capacity grows and never past the limit, so a request that
    cannot fit is refused before anything is allocated (:class:`~mmsb_jax.ResourceLimitError`).
    """

    __slots__ = ("limit", "reserved", "where")

    def __init__(self, limit: int, where: str):
        self.limit = int(limit)
        self.reserved = 0
        self.where = where

    def available(self) -> int:
        return self.limit - self.reserved

    def claim(self, nbytes: int) -> None:
        if nbytes > self.available():
            raise ResourceLimitError(
                f"reserving {nbytes:,} more bytes of pages on {self.where} would pass its memory "
                f"({self.limit:,} bytes, {self.reserved:,} already reserved)"
            )
        self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        self.reserved = max(0, self.reserved - nbytes)


def restore_capacity(high_water: int, shards: int = 1) -> int:
    """The capacity of a pool restored from a checkpoint with ``high_water`` pages, split over
    ``shards`` devices (a restore straight into shards allocates this many rows)."""
    return -(-max(int(high_water), 1) // shards) * shards


def page_sharding(mesh):
    """The sharding of a pool over every device of ``mesh``, along the page (slot) axis."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names)))


class PagePool:
    """The arena of every page with one ``(shape, dtype, device)``.

    Attributes:
      shape: the page shape.
      dtype: the page dtype (a ``numpy.dtype``).
      device: the ``jax.Device`` the arena lives on (unsharded pools).
      sharding: ``None``, or the ``NamedSharding`` that splits the arena's slots over devices
        (capacity is then a multiple of the device count).
      ops: the jitted arena operations for this placement (see :mod:`mmsb_jax.deltas._pool_ops`).
      capacity: rows reserved (the device array grows to it on next access).
      high_water: one past the highest (canonical) slot ever handed out.
      live: slots in use.

    Slots and rows. The allocator hands out *canonical* slots, lowest free first, so the
    same operations give the same slots in every run; checkpoints store pages by them. A
    page's arena row is its canonical slot until :meth:`relayout` moves pages (placement,
    not state); from then on :meth:`alloc` and :meth:`free` take and return rows, and a
    :class:`~mmsb_jax.pages.RowMap` binds them to slots (:meth:`canonical`,
    :meth:`canonical_rows`).
    """

    def __init__(self, index: int, shape: tuple, dtype, device, location: str, sharding=None, ops=None,
                 budget: MemoryBudget | None = None):
        self.index = index
        self.budget = budget  # shared with the other pools of this placement (None: unlimited)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.device = device
        self.location = location
        self.sharding = sharding
        self.ops = ops
        self.shards = 1 if sharding is None else len(sharding.device_set)
        self.page_elems = int(np.prod(self.shape, dtype=np.int64))
        self.page_bytes = self.page_elems * self.dtype.itemsize
        self.capacity = 0
        self.high_water = 0
        self.live = 0
        self._free: list[int] = []  # a heap: lowest free slot first
        self._array = None
        self._map: RowMap | None = None  # None: every page's row is its canonical slot

    # ------------------------------------------------------------------ allocation
    def rows_needed(self, n: int) -> int:
        """The arena rows in use once ``n`` more pages are allocated (pure)."""
        if self._map is not None:
            return self._map.rows_needed(n)
        return self.high_water + max(0, n - len(self._free))

    def growth_bytes(self, n: int) -> int:
        """Bytes the arena would grow by to hold ``n`` more pages (pure)."""
        return (self.capacity_for(self.rows_needed(n)) - self.capacity) * self.page_bytes

    def _take_slots(self, n: int) -> np.ndarray:
        """``n`` canonical slots: free slots first, lowest first, then fresh ones."""
        reuse = min(n, len(self._free))
        fresh = n - reuse
        parts = []
        if reuse:
            parts.append(np.array([heapq.heappop(self._free) for _ in range(reuse)], np.int64))
        if fresh:
            parts.append(np.arange(self.high_water, self.high_water + fresh, dtype=np.int64))
            self.high_water += fresh
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def alloc(self, n: int) -> np.ndarray:
        """Reserve ``n`` pages; returns their rows as an int64 array (free ones first, lowest
        first)."""
        if n == 1:
            return np.array([self.alloc_one()], np.int64)
        self._reserve(self.rows_needed(n))  # may refuse: before anything changes
        slots = self._take_slots(n)
        self.live += n
        return slots if self._map is None else self._map.bind(slots)

    def alloc_one(self) -> int:
        """Reserve one page and return its row (the fast path of :meth:`alloc`)."""
        if self._map is not None:
            return self._alloc_one_mapped()
        if self._free:
            slot = heapq.heappop(self._free)
        else:
            slot = self.high_water
            if slot >= self.capacity:
                self._reserve(slot + 1)  # may refuse: before anything changes
            self.high_water += 1
        self.live += 1
        return slot

    def _alloc_one_mapped(self) -> int:
        self._reserve(self._map.rows_needed(1))  # may refuse: before anything changes
        slots = self._take_slots(1)
        self.live += 1
        return int(self._map.bind(slots)[0])

    def free(self, rows) -> None:
        """Zero ``rows`` on the device and return their slots to the free list."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size == 0:
            return
        padded = np.full(bucket(rows.size), np.iinfo(np.int32).max, np.int32)
        padded[: rows.size] = rows
        self.array = self.ops.zero_slots(self.array, jnp.asarray(padded))
        slots = rows if self._map is None else self._map.unbind(rows)
        for s in slots.tolist():
            heapq.heappush(self._free, s)
        self.live -= int(rows.size)

    # ------------------------------------------------------------------ layout
    @property
    def relaid(self) -> bool:
        """Whether pages sit in other rows than their canonical slots (:meth:`relayout`)."""
        return self._map is not None

    def canonical(self, rows) -> np.ndarray:
        """The canonical slots of the pages in ``rows`` (the rows themselves until a re-layout)."""
        rows = np.asarray(rows, np.int64)
        return rows if self._map is None else self._map.slot_of[rows]

    def canonical_rows(self) -> np.ndarray:
        """The pool's first ``max(high_water, 1)`` canonical slots as a host array: what a
        checkpoint stores, whatever the layout (free slots read as zeros)."""
        n = max(self.high_water, 1)
        if self._map is None:
            if self.sharding is not None:  # assembled on the host from the shards, bit for bit
                # (XLA partitions a device slice of a sharded arena into an all-reduce of the
                # shards' parts, which flushes subnormal floats to zero: they were saved as zeros)
                return np.array(np.asarray(self.array)[:n])
            return np.asarray(self.array[:n])
        out = np.zeros((n, *self.shape), self.dtype)
        rows = np.flatnonzero(self._map.slot_of[: self.capacity] >= 0)
        out[self._map.slot_of[rows]] = np.asarray(self.array)[rows]
        return out

    def relayout(self, order, capacity: int) -> None:
        """Move the pages to new rows: the page in row ``order[i]`` goes to row ``i`` (``order``
        lists every live page's row once), and the arena shrinks or grows to ``capacity``
        rows (at least the live pages; whole shards). Rows past the live pages are free.

        Only placement changes: canonical slots (and so checkpoints) stay as they were.
        Unsharded pools only.
        """
        order = np.asarray(order, np.int64).reshape(-1)
        if self.sharding is not None:
            raise ValueError("a sharded pool keeps its layout (its rows are split over devices)")
        if order.size != self.live or capacity < self.live:
            raise ValueError(f"order must list the {self.live} live rows once and capacity >= {self.live}")
        capacity = self._round(max(int(capacity), 1))
        slots = self.canonical(order)
        if self.budget is not None:
            if capacity > self.capacity:
                self.budget.claim((capacity - self.capacity) * self.page_bytes)
            else:
                self.budget.release((self.capacity - capacity) * self.page_bytes)
        self._array = move_rows(self.array, order, capacity)
        self.capacity = capacity
        row_of = np.full(max(self.high_water, 1), -1, np.int64)
        row_of[slots] = np.arange(order.size)
        slot_of = np.full(capacity, -1, np.int64)
        slot_of[: order.size] = slots
        self._map = RowMap(row_of, slot_of, order.size)

    def capacity_for(self, needed: int) -> int:
        """The capacity a reservation of ``needed`` rows grows to (geometric, within budget)."""
        if needed <= self.capacity:
            return self.capacity
        floor = max(1, min(_MIN_CAPACITY, _MIN_RESERVE_BYTES // max(self.page_bytes, 1)))
        cap = self._round(max(needed, 2 * self.capacity, floor))
        if self.budget is not None and self.page_bytes:
            most = (self.budget.available() + self.capacity * self.page_bytes) // self.page_bytes
            most -= most % self.shards
            cap = max(min(cap, most), self._round(needed))  # the doubling stops at the budget
        return cap

    def _reserve(self, needed: int) -> None:
        """Grow the capacity to hold ``needed`` slots, or refuse (nothing changes)."""
        if needed > self.capacity:
            cap = self.capacity_for(needed)
            if self.budget is not None:
                try:
                    self.budget.claim((cap - self.capacity) * self.page_bytes)
                except ResourceLimitError as e:
                    raise ResourceLimitError(
                        f"{needed:,} pages of {self.dtype.name}{self.shape} ({needed * self.page_bytes:,} bytes) "
                        f"do not fit: {e}"
                    ) from None
            self.capacity = cap

    def _round(self, capacity: int) -> int:
        """``capacity`` rounded up to a whole number of slots per shard."""
        return -(-capacity // self.shards) * self.shards

    # ------------------------------------------------------------------ the arena
    @property
    def array(self) -> jax.Array:
        """The arena ``(capacity, *shape)``, grown on the device to the reserved capacity."""
        arr = self._array
        if arr is None:
            if self.sharding is not None:
                arr = _zeros_sharded(self.sharding, (self.capacity,) + self.shape, self.dtype)()
            else:
                with jax.default_device(self.device):
                    arr = jnp.zeros((self.capacity,) + self.shape, self.dtype)
            self._array = arr
        elif arr.shape[0] < self.capacity:
            grow = _grow if self.sharding is None else _grow_sharded(self.sharding)
            arr = self._array = grow(arr, self.capacity)
        return arr

    @array.setter
    def array(self, value: jax.Array) -> None:
        self._array = value

    @property
    def free_slots(self) -> int:
        """Rows freed by deletes (below the high-water mark), handed out again before the
        pool grows."""
        return len(self._free) if self._map is None else len(self._map.free)

    @property
    def placement(self):
        """Where the arena lives: its ``jax.Device``, or its sharding when it is split."""
        return self.device if self.sharding is None else self.sharding

    @property
    def materialized_bytes(self) -> int:
        return 0 if self._array is None else int(self._array.shape[0]) * self.page_bytes

    def stats(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "dtype": str(self.dtype),
            "device": str(self.placement),
            "location": self.location,
            "pages": self.live,
            "bytes": self.live * self.page_bytes,
            "capacity": self.capacity,
            "capacity_bytes": self.capacity * self.page_bytes,
            "materialized_bytes": self.materialized_bytes,
            "pressure": (self.live / self.capacity) if self.capacity else 0.0,
            "free_slots": self.free_slots,
            "relaid": self._map is not None,
        }

    def restore(self, array, high_water: int, used_slots: np.ndarray) -> None:
        """Install a restored arena (checkpoint) and rebuild the free list from the used slots.

        ``array`` holds at least ``max(high_water, 1)`` rows; rows from ``high_water`` on are
        not pages (padding a multi-process checkpoint adds) and read as zeros. A
        ``jax.Array`` already placed with this pool's sharding and :func:`restore_capacity`
        rows, zero from ``high_water`` on, is installed as it is (a restore into the shards of
        several processes). The capacity is the
        pages' own, in whole shards: the next page past it grows the arena as usual. (A
        16-slot minimum here made the first read of a restored pool of 25 MB pages allocate
        and copy a 410 MB arena.)"""
        capacity = restore_capacity(high_water, self.shards)
        if self.budget is not None:
            self.budget.claim((capacity - self.capacity) * self.page_bytes)
        self.capacity = capacity
        rows = max(int(high_water), 1)
        if isinstance(array, jax.Array) and not array.is_fully_addressable:
            self._array = array
        elif self.sharding is not None:
            full = np.zeros((self.capacity, *self.shape), self.dtype)  # whole shards
            full[:high_water] = np.asarray(array[:high_water])
            self._array = jax.device_put(full, self.sharding)
        else:
            self._array = jax.device_put(np.asarray(array[:rows]), self.device)
        self.high_water = int(high_water)
        used = np.zeros(self.high_water, bool)
        used[np.asarray(used_slots, np.int64)] = True
        self._free = np.flatnonzero(~used).tolist()
        heapq.heapify(self._free)
        self.live = int(used.sum())
        self._map = None  # a restored pool sits in canonical order
