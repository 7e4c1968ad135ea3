"""Where the pages of a re-laid-out pool sit: canonical slot <-> arena row.

A pool's *canonical* slots are what the allocator hands out (lowest free slot first), the
same in every run of the same operations: checkpoints store pages by canonical slot, so
they do not depend on where a page sits in memory. Until a pool is re-laid out
(:meth:`~mmsb_jax.pages.PagePool.relayout`), a page's arena row is its canonical slot. After
it, a :class:`RowMap` keeps the two apart: rows are handed out by the same rule as slots
(lowest free row first, then fresh rows from a high-water mark), and each bound row knows
its canonical slot.
"""

from __future__ import annotations

import heapq

import numpy as np


class RowMap:
    """The binding of canonical slots to arena rows of one pool.

    Attributes:
      row_of: int64 over canonical slots; the row of a live page's slot, ``-1`` for a free slot.
      slot_of: int64 over rows; the canonical slot a row holds, ``-1`` for a free row.
      high_water: one past the highest row ever handed out since the re-layout.
    """

    __slots__ = ("row_of", "slot_of", "free", "high_water")

    def __init__(self, row_of: np.ndarray, slot_of: np.ndarray, high_water: int):
        self.row_of = row_of
        self.slot_of = slot_of
        self.high_water = int(high_water)
        self.free: list[int] = []  # a heap of rows below high_water that hold no page

    def rows_needed(self, n: int) -> int:
        """The arena rows in use once ``n`` more pages are bound (free rows first)."""
        return self.high_water + max(0, n - len(self.free))

    def bind(self, slots: np.ndarray) -> np.ndarray:
        """Give each canonical slot in ``slots`` a row (the arena already has room); returns
        the rows, lowest free row first."""
        n = slots.size
        reuse = min(n, len(self.free))
        rows = np.empty(n, np.int64)
        for i in range(reuse):
            rows[i] = heapq.heappop(self.free)
        rows[reuse:] = np.arange(self.high_water, self.high_water + n - reuse)
        self.high_water += n - reuse
        self.row_of = _ensure(self.row_of, int(slots.max()) + 1)
        self.slot_of = _ensure(self.slot_of, self.high_water)
        self.row_of[slots] = rows
        self.slot_of[rows] = slots
        return rows

    def unbind(self, rows: np.ndarray) -> np.ndarray:
        """Free ``rows``; returns the canonical slots they held."""
        slots = self.slot_of[rows].copy()
        self.row_of[slots] = -1
        self.slot_of[rows] = -1
        for r in rows.tolist():
            heapq.heappush(self.free, r)
        return slots


def _ensure(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` grown (geometrically, filled with -1) to hold at least ``n`` entries."""
    if a.size >= n:
        return a
    out = np.full(max(n, 2 * a.size), -1, np.int64)
    out[: a.size] = a
    return out
