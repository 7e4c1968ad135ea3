"""Replay of the tree-journal records (ROWS, TREE_DEF, TREE_STEP) through the live code paths.

A run of consecutive such records is collected and applied as one :class:`PageWrites`, the
object the live journal applies with, so a replayed page equals the live one bit for bit
and carries the epoch of its last write. TREE_DEF and TREE_STEP go through the functions the
live journal calls (``_tree_define``, ``_tree_tag``). Every check that fails raises an
``MMSBError`` naming the value, which replay reports with the file and offset.
"""

from __future__ import annotations

import numpy as np

from .._errors import InvalidDeltaError
from ..log._decode import Rows, TreeDef, TreeStep
from ._tree_codec import decode_structure
from ._tree_writes import PageWrites, Write

TREE_RECORDS = (Rows, TreeDef, TreeStep)


def rows_write(state, rec: Rows) -> tuple[int, Write]:
    """A checked ROWS record as ``(page id, Write)``."""
    pid, pool, _ = state._locate(int(rec.page_id))
    size, row_len = pool.page_elems, int(rec.row_len)
    if np.dtype(rec.values.dtype) != pool.dtype:
        raise InvalidDeltaError(f"ROWS for page {pid} holds {rec.values.dtype} values; the page is {pool.dtype}")
    if size % row_len:
        raise InvalidDeltaError(f"ROWS for page {pid} has row_len={row_len}, which does not divide its {size} elements")
    rows = np.asarray(rec.rows)
    if rows.size and int(rows.max()) >= size // row_len:
        raise InvalidDeltaError(f"ROWS for page {pid} writes row {int(rows.max())}; the page has {size // row_len} rows")
    whole = row_len == size and rows.shape == (1,)
    return pid, Write("whole" if whole else "rows", row_len, None if whole else rows, np.asarray(rec.values))


class TreeRun:
    """Consecutive tree-journal records of a replay, applied together."""

    def __init__(self, state):
        self.state = state
        self.writes = PageWrites()

    def add(self, rec) -> None:
        st = self.state
        if isinstance(rec, Rows):
            pid, w = rows_write(st, rec)
            self.writes.add(pid, rec.epoch, w)
        elif isinstance(rec, TreeDef):
            st._tree_define(rec.name, decode_structure(rec.structure), np.asarray(rec.page_ids, np.int64))
        else:
            st._tree_tag(rec.name, int(rec.step), rec.epoch)
        st._epoch = rec.epoch

    def flush(self) -> None:
        if self.writes:
            self.writes.apply(self.state, kernel=self.state._sparse_kernel())
