"""Replay of the tree-journal records (ROWS, TREE_DEF, TREE_STEP) through the live code paths.

Consecutive ROWS records are collected and applied as one :class:`PageWrites`, the object the
live journal applies with, so a replayed page equals the live one bit for bit and carries
the epoch of its last write (replay applies them before any record of another kind).
TREE_DEF and TREE_STEP go through the functions the live journal calls (``_tree_define``,
``_tree_tag``). Every check that fails raises an ``MMSBError`` naming the value, which replay
reports with the record's file and offset.
"""

from __future__ import annotations

import numpy as np

from .._errors import InvalidDeltaError
from ._tree_codec import decode_structure
from ._tree_writes import PageWrites, Write


class TreeRun:
    """The tree-journal records of a replay."""

    def __init__(self, state):
        self.state = state
        self.writes = PageWrites()

    def add_rows(self, rec, pid: int) -> None:
        """A checked ROWS record joins the writes."""
        _, pool, _ = self.state._locate(pid)
        size, row_len = pool.page_elems, int(rec.row_len)
        if np.dtype(rec.values.dtype) != pool.dtype:
            raise InvalidDeltaError(f"ROWS for page {pid} holds {rec.values.dtype} values; the page is {pool.dtype}")
        if size % row_len:
            raise InvalidDeltaError(f"ROWS for page {pid} has row_len={row_len}, which does not divide its {size} elements")
        rows = np.asarray(rec.rows)
        if rows.size and int(rows.max()) >= size // row_len:
            raise InvalidDeltaError(f"ROWS for page {pid} writes row {int(rows.max())}; the page has {size // row_len} rows")
        whole = row_len == size and rows.shape == (1,)
        values = np.asarray(rec.values)
        self.writes.add(pid, rec.epoch, Write("whole" if whole else "rows", row_len, None if whole else rows, values))

    def define(self, rec, page_ids: np.ndarray) -> None:
        self.state._tree_define(rec.name, decode_structure(rec.structure), page_ids)

    def tag(self, rec) -> None:
        self.state._tree_tag(rec.name, int(rec.step), rec.epoch)

    def flush(self) -> None:
        if self.writes:
            self.writes.apply(self.state, kernel=self.state._sparse_kernel())
