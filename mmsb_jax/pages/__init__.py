"""Layer 0 (physical): page pools, the slot allocator, placement and sharding of arenas.

All pages of one ``(shape, dtype, device)`` live in one arena array ``(capacity, *shape)``;
a page is a slot in it (its row, until a re-layout moves it: :class:`RowMap`). May import: ``mmsb_jax._errors``, ``mmsb_jax._compat``, jax, numpy.
"""

from ._pool import (
    MAX_PAGE_ELEMS as MAX_PAGE_ELEMS,
    MemoryBudget as MemoryBudget,
    device_memory_bytes as device_memory_bytes,
    host_memory_bytes as host_memory_bytes,
    PagePool as PagePool,
    bucket as bucket,
    move_rows as move_rows,
    page_sharding as page_sharding,
    restore_capacity as restore_capacity,
    pool_jit as pool_jit,
)
from ._bits import moved as moved, unmoved as unmoved
from ._rowmap import RowMap as RowMap
