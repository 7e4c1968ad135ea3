"""The page table: page id -> (pool, slot) and the epoch that last changed the page.

Columnar numpy arrays indexed by page id (ids are consecutive and never reused), so batches
look up thousands of pages with one fancy index. ``pool < 0`` marks a deleted (or never
created) id.
"""

from __future__ import annotations

import numpy as np

from .._errors import ResourceLimitError


class PageTable:
    """Columns ``pool`` (int32), ``slot`` (int64) and ``epoch`` (int64) over ids ``[0, next_id)``."""

    __slots__ = ("next_id", "pool", "slot", "epoch", "budget")

    #: bytes per id (int32 pool, int64 slot, int64 epoch)
    ID_BYTES = 20

    def __init__(self, capacity: int = 1024, budget=None):
        self.budget = budget  # a pages.MemoryBudget the columns claim from as they grow (None: unlimited)
        self.next_id = 0
        self.pool = np.full(capacity, -1, np.int32)
        self.slot = np.zeros(capacity, np.int64)
        self.epoch = np.zeros(capacity, np.int64)

    def growth_bytes(self, n_ids: int) -> int:
        """Bytes :meth:`ensure` would add to hold ``n_ids`` ids (pure)."""
        cap = self.pool.shape[0]
        if n_ids <= cap:
            return 0
        new_cap = max(n_ids, 2 * cap)
        if self.budget is not None:
            new_cap = max(n_ids, min(new_cap, cap + self.budget.available() // self.ID_BYTES))
        return (new_cap - cap) * self.ID_BYTES

    def ensure(self, n_ids: int) -> None:
        """Grow the columns (geometrically) to hold ids ``[0, n_ids)``."""
        cap = self.pool.shape[0]
        if n_ids <= cap:
            return
        new_cap = max(n_ids, 2 * cap)
        if self.budget is not None:
            new_cap = max(n_ids, min(new_cap, cap + self.budget.available() // self.ID_BYTES))
            try:
                self.budget.claim((new_cap - cap) * self.ID_BYTES)
            except ResourceLimitError as e:
                raise ResourceLimitError(f"a page table of {n_ids:,} page ids does not fit: {e}") from None
        for name, fill in (("pool", -1), ("slot", 0), ("epoch", 0)):
            old = getattr(self, name)
            new = np.full(new_cap, fill, old.dtype)
            new[:cap] = old
            setattr(self, name, new)

    def live_ids(self) -> np.ndarray:
        """The ids of every live page, ascending."""
        return np.flatnonzero(self.pool[: self.next_id] >= 0).astype(np.int64)

    def ids_in_pool(self, pool_index: int) -> np.ndarray:
        """The ids of the live pages of one pool, ascending."""
        return np.flatnonzero(self.pool[: self.next_id] == pool_index)
