"""What a tree step writes: the bitwise change of each leaf, as the fewest bytes, and applying it.

:func:`plan_leaf` compares a leaf with its previous value bit for bit (NaN payloads and -0.0
count) and picks the cheapest encoding of what changed: nothing, the whole page (raw bytes,
no index), the changed rows of its leading axis, or the changed elements (a sparse delta).
:class:`PageWrites` collects such writes for many pages and epochs and applies them in one
go, last writer winning per element, with the page epochs of a one-by-one application. The
live journal and replay both apply through it, so replay equals live, bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..pages import bucket

_SAMPLE = 64  # elements probed before scanning a large leaf


class Write(NamedTuple):
    """One leaf's change: ``kind`` is ``"whole"`` (``values`` = the page, flat),
    ``"rows"`` (``rows`` of ``row_len`` elements each) or ``"sparse"`` (flat ``rows`` = indices)."""

    kind: str
    row_len: int
    rows: np.ndarray | None
    values: np.ndarray


def as_bits(x: np.ndarray) -> np.ndarray:
    """``x`` flat, as unsigned integers of its width (bool as uint8): compares bit for bit."""
    x = np.ascontiguousarray(x).reshape(-1)
    return x.view(np.uint8) if x.dtype == np.bool_ else x.view(f"u{x.dtype.itemsize}")


def plan_leaf(prev: np.ndarray, new: np.ndarray, scratch=None) -> Write | None:
    """The cheapest write turning ``prev`` into ``new`` (same shape and dtype), or None.

    Unchanged (bit for bit) is None. A large leaf whose 64 probed elements (spread evenly)
    all changed is written whole without scanning it (a dense update: its raw bytes are the
    cheapest encoding, up to the few unchanged elements it might hold). Otherwise the changed
    elements are counted and the fewest bytes win: the whole page, the changed rows of the
    leading axis (ROWS), or the changed elements (SPARSE, 4 index bytes each). ``scratch``
    (a ``take`` / ``give`` pool of host arrays) lends the comparison its bool array.

    Example:
      >>> import numpy as np
      >>> prev = np.zeros((4, 3), np.float32)
      >>> new = prev.copy(); new[2] = 1.0
      >>> w = plan_leaf(prev, new); (w.kind, w.row_len, w.rows.tolist())
      ('rows', 3, [2])
      >>> plan_leaf(new, new) is None
      True
    """
    a, b = as_bits(prev), as_bits(new)
    size = b.shape[0]
    flat = np.ascontiguousarray(new).reshape(-1)
    if size == 0:
        return None
    if size >= 4 * _SAMPLE:  # a leaf whose sampled elements all changed is written whole, unscanned
        probe = np.linspace(0, size - 1, _SAMPLE).astype(np.int64)
        if (a[probe] != b[probe]).all():
            return Write("whole", size, None, flat)
    ne = scratch.take((size,), np.bool_) if scratch is not None else np.empty(size, np.bool_)
    try:
        np.not_equal(a, b, out=ne)
        return _cheapest(ne, new, flat, size)
    finally:
        if scratch is not None:
            scratch.give([ne])


def _cheapest(ne: np.ndarray, new: np.ndarray, flat: np.ndarray, size: int) -> Write | None:
    """The fewest-bytes write of the elements ``ne`` marks changed (None: none changed)."""
    changed = int(np.count_nonzero(ne))
    if changed == 0:
        return None
    isz = new.dtype.itemsize
    if changed == size:
        return Write("whole", size, None, flat)
    row_len = size // new.shape[0] if new.ndim >= 2 and new.shape[0] else size
    sizes = {"whole": _body_bytes(16, 1, size * isz), "sparse": _body_bytes(8, changed, changed * isz)}
    if row_len < size:
        row_changed = ne.reshape(-1, row_len).any(axis=1)
        r = int(np.count_nonzero(row_changed))
        sizes["rows"] = _body_bytes(16, r, r * row_len * isz)
    best = min(("whole", "rows", "sparse"), key=lambda k: sizes.get(k, np.inf))  # ties: fewer scatters
    if best == "rows":
        rows = np.flatnonzero(row_changed).astype(np.int32)
        return Write("rows", row_len, rows, flat.reshape(-1, row_len)[rows].reshape(-1))
    if best == "sparse":
        idx = np.flatnonzero(ne).astype(np.int32)
        return Write("sparse", 1, idx, flat[idx])
    return Write("whole", size, None, flat)


def _body_bytes(fixed: int, n_index: int, value_bytes: int) -> int:
    """Encoded body size of a ROWS / SPARSE record: fixed fields, an int32 index array and the
    values, each array block 24 bytes of header and name, padded to 8 (docs/tlog-format.md)."""
    return fixed + 24 + (-(-4 * n_index // 8) * 8) + 24 + (-(-value_bytes // 8) * 8)


def log_write(batch, page_id: int, w: Write) -> None:
    """Append ``w`` for ``page_id`` to a log batch (ROWS, or SPARSE for scattered elements)."""
    if w.kind == "sparse":
        batch.log_sparse(page_id, w.rows, w.values)
    elif w.kind == "rows":
        batch.log_rows(page_id, w.row_len, w.rows, w.values)
    else:
        batch.log_rows(page_id, w.row_len, np.zeros(1, np.int32), w.values)


def _last_per_target(targets: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each distinct target (ascending target)."""
    _, first_from_end = np.unique(targets[::-1], return_index=True)
    return targets.shape[0] - 1 - first_from_end


def _row_targets(w: Write) -> np.ndarray:
    """The flat element indices a partial write covers, in chunk order."""
    if w.kind == "sparse":
        return w.rows.astype(np.int64)
    return (w.rows.astype(np.int64)[:, None] * w.row_len + np.arange(w.row_len, dtype=np.int64)).reshape(-1)


class PageWrites:
    """Writes to pages, in epoch order, applied together (last writer wins per element).

    Each page ends as it would after applying its writes one by one, and its epoch is the
    epoch of its last write. A whole-page write drops the writes before it, so what is held
    is at most one page plus the partial writes after it (``partial_bytes``).
    """

    def __init__(self):
        self._pages: dict[int, list] = {}  # page id -> [(epoch, Write), ...] in order
        self.partial_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._pages)

    def add(self, page_id: int, epoch: int, w: Write) -> None:
        writes = self._pages.setdefault(int(page_id), [])
        if w.kind == "whole":
            self.partial_bytes -= sum(old.values.nbytes for _, old in writes if old.kind != "whole")
            writes.clear()
        else:
            self.partial_bytes += w.values.nbytes
        writes.append((int(epoch), w))

    def rebase_whole(self, values: dict) -> None:
        """Make each page's leading whole-page write read ``values[page]`` (the page's value
        after all its writes here, so the writes after it re-apply what it already holds)."""
        for pid, writes in self._pages.items():
            if writes[0][1].kind == "whole" and pid in values:
                writes[0] = (writes[0][0], writes[0][1]._replace(values=values[pid]))

    def merge(self, other: PageWrites) -> None:
        """Add ``other``'s writes (all later than this one's) after these."""
        for pid, writes in other._pages.items():
            for epoch, w in writes:
                self.add(pid, epoch, w)

    def apply(self, state, kernel: bool = False) -> None:
        """Write every page of ``state`` (called under its lock; the journal is already written).

        A page whose writes cover few of its elements takes them as one sparse scatter;
        otherwise the page is assembled on the host (its last whole value, or its current
        content, then each later write in order) and written whole.
        """
        pages, self._pages, self.partial_bytes = self._pages, {}, 0
        whole: dict[int, list] = {}  # pool index -> [(slot, page values)]
        for pid, writes in pages.items():
            _, pool, slot = state._locate(pid)
            lead = writes[0][1] if writes[0][1].kind == "whole" else None
            rest = writes[1:] if lead is not None else writes
            covered = sum(w.values.size for _, w in rest)
            if lead is None and covered * _ASSEMBLE_FRACTION < pool.page_elems:
                targets, values = _resolved(rest)  # (the scatter runs the observers itself)
                state._apply_sparse_rows(np.array([pid], np.int64), targets.astype(np.int32)[None],
                                         values[None], kernel)
            elif lead is None and _leading_rows(rest, pool):
                # many rows of the page's leading axis (e.g. a replayed tail of an embedding's
                # steps): written on the device, the page never taken off it and back
                rows, values = _resolved_rows(rest)
                m = bucket(rows.size, minimum=1, steps=8)
                padded = np.full(m, pool.shape[0], np.int32)  # padding: past the page's end, dropped
                padded[: rows.size] = rows
                block = np.empty((m, *pool.shape[1:]), pool.dtype)
                block[: rows.size] = values.reshape(-1, *pool.shape[1:])
                block[rows.size :] = 0  # (the padding rows are dropped; zeros, never stale memory)
                pool.array = pool.ops.write_page_rows(pool.array, np.int32(slot), padded, block)
                state._after_write(pool, [slot])
            else:
                page = lead.values.copy() if lead is not None else state._page_base(pid).reshape(-1)
                for _, w in rest:
                    _assign(page, w)
                whole.setdefault(pool.index, []).append((slot, page.reshape(pool.shape)))
            state._table.epoch[pid] = writes[-1][0]
        for pi, items in whole.items():
            pool = state._pools[pi]
            _write_whole_pages(pool, items)
            state._after_write(pool, sorted(slot for slot, _ in items))


_ASSEMBLE_FRACTION = 8  # partial writes covering >= 1/8 of a page: assembled on the host, written whole


def _assign(page: np.ndarray, w: Write) -> None:
    """Apply one partial write to a flat host page (a repeated row or index: its last value)."""
    idx, values = w.rows, w.values
    if idx.size > 1 and not bool(np.all(idx[1:] > idx[:-1])):
        keep = _last_per_target(idx)
        idx = idx[keep]
        values = values.reshape(-1, w.row_len)[keep].reshape(-1) if w.kind == "rows" else values[keep]
    if w.kind == "rows":
        page.reshape(-1, w.row_len)[idx] = values.reshape(-1, w.row_len)
    else:
        page[idx] = values


def _leading_rows(writes, pool) -> bool:
    """Whether every one of ``writes`` writes whole rows of the page's leading axis."""
    return len(pool.shape) >= 2 and all(
        w.kind == "rows" and w.row_len * pool.shape[0] == pool.page_elems for _, w in writes)


def _resolved_rows(writes) -> tuple[np.ndarray, np.ndarray]:
    """The rows (ascending, each once: its last value) and their values, ``(rows, row_len)``,
    of row writes ``[(epoch, Write), ...]`` in order."""
    row_len = writes[0][1].row_len
    rows = np.concatenate([w.rows for _, w in writes]).astype(np.int32, copy=False)
    values = np.concatenate([w.values.reshape(-1, row_len) for _, w in writes])
    if len(writes) > 1 or not bool(np.all(rows[1:] > rows[:-1])):
        keep = _last_per_target(rows)
        rows, values = rows[keep], values[keep]
    return rows, values


def _resolved(writes) -> tuple[np.ndarray, np.ndarray]:
    """The flat targets and values of ``[(epoch, Write), ...]`` in order, each target once
    (its last value): never left to the order a scatter applies repeats in."""
    targets = np.concatenate([_row_targets(w) for _, w in writes])
    values = np.concatenate([w.values for _, w in writes])
    if len(writes) > 1 or not bool(np.all(targets[1:] > targets[:-1])):
        keep = _last_per_target(targets)
        targets, values = targets[keep], values[keep]
    return targets, values


def _write_whole_pages(pool, items) -> None:
    """Write whole pages into distinct slots of ``pool``, in groups of powers of two (few
    compiled shapes, no padding pages to copy). The page arrays are the caller's own copies,
    left unchanged afterwards (jax may read host memory later, in place)."""
    i = 0
    while i < len(items):
        m = 1 << ((len(items) - i).bit_length() - 1)
        group = items[i:i + m]
        slots = np.array([s for s, _ in group], np.int32)
        rows = group[0][1][None] if m == 1 else np.stack([v for _, v in group])  # one page: no copy
        pool.array = pool.ops.write_rows(pool.array, slots, rows)
        i += m
