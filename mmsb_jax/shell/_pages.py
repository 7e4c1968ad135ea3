"""Creating and deleting pages: the page table, the pools' slots, fills, and the records of
both (a mixin of :class:`~mmsb_jax.shell._state.MMSBState`)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._checks import is_int
from .._errors import InvalidArgumentError, InvalidDeltaError, ResourceLimitError
from ..pages import PagePool
from . import _inputs
from ._distributed import collective
from ._page import Page


class PageLifecycle:
    """Mixin of :class:`MMSBState`: ``create_page(s)``, ``delete_page`` and page handles."""

    @collective("create_page")
    def create_page(self, size=None, dtype=jnp.uint8, location="cpu", *, shape=None, fill=None) -> Page:
        """Create one page (zero-filled, or ``fill``); see :func:`mmsb_jax.create_page`."""
        with self._lock:
            self._check_open()
            pool, shape = self._resolve_spec(size, shape, dtype, location)
            try:
                value = self._fill_value(fill, pool)
            except (InvalidArgumentError, InvalidDeltaError):
                self._drop_new_pool(pool)
                raise
            try:
                slot = pool.alloc_one()
            except ResourceLimitError:
                self._drop_new_pool(pool)
                raise
            t = self._table
            pid = t.next_id
            if pid >= t.pool.shape[0]:
                t.ensure(pid + 1)
            t.next_id = pid + 1
            self._epoch += 1
            t.pool[pid] = pool.index
            t.slot[pid] = slot
            t.epoch[pid] = self._epoch
            self._counters["pages_created"] += 1
            self._log_create(pid, 1, pool, value)
            self._fill_slots(pool, [slot], value)
            return Page(pid, shape, pool.dtype, pool.location, pool.placement)

    def _fill_value(self, fill, pool: PagePool):
        """``fill`` as one value of the pool's dtype (``None`` when it is zero: nothing to write).

        ``"zero"`` / ``"one"``: the state's semiring's zero / one for the dtype (tropical's zero
        is +inf: a page made for a dependency then passes its parents through)."""
        if fill is None:
            return None
        if isinstance(fill, str):
            if fill not in ("zero", "one"):
                raise InvalidArgumentError(f"fill={fill!r}: expected a number, 'zero' or 'one' (the semiring's)")
            if not self.semiring.accepts(pool.dtype):
                raise InvalidArgumentError(
                    f"fill={fill!r}: the state's semiring {self.semiring.name!r} has no {fill} for {pool.dtype} pages")
            value = (self.semiring.zero_for if fill == "zero" else self.semiring.one_for)(pool.dtype)
            value = np.asarray(value, pool.dtype)
        else:
            _inputs.refuse_tracers("fill", fill)
            value = np.asarray(_inputs.values(fill, pool.dtype, "fill"))
            if value.shape != ():
                raise InvalidArgumentError(f"fill must be one value, got an array of shape {value.shape}")
        value = value.astype(pool.dtype)
        return None if not value.tobytes().strip(b"\0") else value[()]

    def _fill_slots(self, pool: PagePool, slots, value) -> None:
        if value is None:
            return
        rows = np.full((len(slots), *pool.shape), value, pool.dtype)
        pool.array = pool.ops.write_rows(pool.array, np.asarray(slots, np.int32), rows)
        self._after_write(pool, slots)  # a pool with dependencies recomputes the new slots

    @collective("create_pages")
    def create_pages(self, n: int, size=None, dtype=jnp.uint8, location="cpu", *, shape=None, fill=None) -> np.ndarray:
        """Create ``n`` pages (zero-filled, or ``fill``) in one epoch; returns their ids (consecutive ints)."""
        if not is_int(n) or n < 0:
            raise InvalidArgumentError(f"n={n!r} must be a non-negative int")
        n = int(n)
        with self._lock:
            self._check_open()
            pool, _ = self._resolve_spec(size, shape, dtype, location, register=n > 0)
            try:
                value = self._fill_value(fill, pool)
            except (InvalidArgumentError, InvalidDeltaError):
                self._drop_new_pool(pool)
                raise
            if n == 0:  # validated, but nothing created: no pool, no epoch
                return np.zeros(0, np.int64)
            first = self._table.next_id
            try:
                self._check_room(pool, n)  # refuses before anything is allocated
            except ResourceLimitError:
                self._drop_new_pool(pool)
                raise
            self._table.ensure(first + n)
            slots = pool.alloc(n)
            self._table.next_id = first + n
            self._epoch += 1
            self._table.pool[first : first + n] = pool.index
            self._table.slot[first : first + n] = slots
            self._table.epoch[first : first + n] = self._epoch
            self._counters["pages_created"] += n
            self._log_create(first, n, pool, value)
            self._fill_slots(pool, slots, value)
            return np.arange(first, first + n, dtype=np.int64)

    @collective("delete_page")
    def delete_page(self, page_id) -> None:
        """Delete a page; its slot is zeroed and reused by a later create."""
        with self._lock:
            self._check_open()
            pid, pool, slot = self._locate(page_id)
            if self._trees:
                self._refuse_tree_page(pid)
            pg = self._pool_graphs.get(pool.index)
            if pg is not None and pg.graph.has_node(slot):
                for c in pg.graph.children(slot):
                    if c in pg.derive_names:
                        raise InvalidArgumentError(
                            f"page {pid} is a parent of derived page {self._slot_owners(pool)[c]}; delete that first")
                pg.graph.remove_node(slot)
                pg.derive_names.pop(slot, None)
            pool.free([slot])
            self._table.pool[pid] = -1
            self._observers.pop(pid, None)
            self._observed.pop(pid, None)
            self._epoch += 1
            self._counters["pages_deleted"] += 1
            self._log_delete(pid)
            if pg is not None:
                pg.invalidate()
                self._notify(pool)

    def page(self, page_id) -> Page:
        """The :class:`Page` handle of a live page id."""
        with self._lock:
            pid, pool, _ = self._locate(page_id)
            return Page(pid, pool.shape, pool.dtype, pool.location, pool.placement)

    def page_ids(self) -> np.ndarray:
        """The ids of every live page, ascending."""
        with self._lock:
            return self._table.live_ids()

    def page_epoch(self, page_id) -> int:
        """The epoch that last changed ``page_id``."""
        with self._lock:
            pid, _, _ = self._locate(page_id)
            return int(self._table.epoch[pid])
