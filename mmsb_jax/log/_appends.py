"""The writer's typed appends: one ``log_*`` method per record kind, each encoding its body
(:mod:`mmsb_jax.log._encode`) and framing it for :class:`~mmsb_jax.log.TLog`'s buffer."""

from __future__ import annotations

import time

from .._errors import InvalidArgumentError
from ._batch import check_epoch
from ._records import Commit, LogRecord
from ._encode import (
    U64_MAX,
    body_accumulate,
    body_add_dep,
    body_add_deps,
    body_create_pages,
    body_delete_pages,
    body_dense,
    body_dense_packed,
    body_derive,
    body_remove_dep,
    body_remove_deps,
    body_rows,
    body_sparse,
    body_sparse_batch,
    body_tree_def,
    body_tree_step,
)
from ._framing import frame, frame_chunks


class RecordAppends:
    """Mixin of :class:`~mmsb_jax.log.TLog`: a record of each kind, appended at an epoch."""

    def _emit(self, epoch, kind, parts, source) -> None:
        if type(epoch) is not int or not 0 <= epoch <= U64_MAX:
            epoch = check_epoch(epoch)
        src = self.source if source is None else source
        if self.fsync == "never":  # buffered past this call: copy the parts into one record
            rec = frame(epoch, kind, 0, time.time_ns(), src, parts)
            self._push(epoch, [rec], len(rec), [kind])
        else:  # written to the OS before this returns: a large record's arrays are not copied
            chunks, nbytes = frame_chunks(epoch, kind, 0, time.time_ns(), src, parts)
            self._push(epoch, chunks, nbytes, [kind])

    def log_create_pages(self, epoch, first_page_id, count, shape, dtype, location="cpu", fill=None, *, source=None):
        """CREATE_PAGES: pages ``first_page_id .. first_page_id+count-1`` of ``shape``/``dtype``,
        every element ``fill`` (``None``: zero)."""
        self._emit(epoch, *body_create_pages(first_page_id, count, shape, dtype, location, fill), source)

    def log_delete_pages(self, epoch, page_ids, *, source=None):
        """DELETE_PAGES: ``page_ids`` (int array-like)."""
        self._emit(epoch, *body_delete_pages(page_ids), source)

    def log_dense(self, epoch, page_id, mask, values, *, source=None):
        """DENSE: bool ``mask`` (page shape) and ``values``: either one per true mask entry
        (C order) or a full page array (the masked positions are taken)."""
        self._emit(epoch, *body_dense(page_id, mask, values), source)

    def log_dense_packed(self, epoch, page_id, shape, packed, values, *, source=None):
        """DENSE from a packed mask (``np.packbits`` of the flat mask): the unchecked fast path."""
        self._emit(epoch, *body_dense_packed(page_id, shape, packed, values), source)

    def log_sparse(self, epoch, page_id, indices, values, *, source=None):
        """SPARSE: flat ``indices`` (int32 range) and equally many ``values``."""
        self._emit(epoch, *body_sparse(page_id, indices, values), source)

    def log_sparse_batch(self, epoch, page_ids, indices, values, *, source=None):
        """SPARSE_BATCH: ``page_ids`` (n,), ``indices`` (n, k), ``values`` (n, k) — n sparse deltas."""
        self._emit(epoch, *body_sparse_batch(page_ids, indices, values), source)

    def log_accumulate(self, epoch, page_id, semiring, payload, *, source=None):
        """ACCUMULATE: ``page ⊕= payload`` under the semiring named ``semiring``."""
        self._emit(epoch, *body_accumulate(page_id, semiring, payload), source)

    def log_add_dep(self, epoch, parent, child, weight=None, edge_type="", *, source=None):
        """ADD_DEP: edge ``parent -> child``; ``weight=None`` is the semiring's one."""
        self._emit(epoch, *body_add_dep(parent, child, weight, edge_type), source)

    def log_remove_dep(self, epoch, parent, child, *, source=None):
        """REMOVE_DEP: edge ``parent -> child``."""
        self._emit(epoch, *body_remove_dep(parent, child), source)

    def log_add_deps(self, epoch, parents, children, weights=None, edge_type="", *, source=None):
        """ADD_DEPS: edges ``parents[i] -> children[i]``; a NaN weight is the semiring's one."""
        self._emit(epoch, *body_add_deps(parents, children, weights, edge_type), source)

    def log_remove_deps(self, epoch, parents, children, *, source=None):
        """REMOVE_DEPS: edges ``parents[i] -> children[i]``."""
        self._emit(epoch, *body_remove_deps(parents, children), source)

    def log_derive(self, epoch, child, name, parents, *, source=None):
        """DERIVE: page ``child`` is the function registered as ``name`` of ``parents``."""
        self._emit(epoch, *body_derive(child, name, parents), source)

    def log_rows(self, epoch, page_id, row_len, rows, values, *, source=None):
        """ROWS: rows ``rows`` (int32, (r,)) of ``row_len`` elements of the flat page become
        ``values`` (r * row_len,); ``rows=[0]``, ``row_len`` = page size: a whole-page write."""
        self._emit(epoch, *body_rows(page_id, row_len, rows, values), source)

    def log_tree_def(self, epoch, name, structure, page_ids, *, source=None):
        """TREE_DEF: tree ``name`` with ``structure`` (canonical JSON) and its leaf ``page_ids``."""
        self._emit(epoch, *body_tree_def(name, structure, page_ids), source)

    def log_tree_step(self, epoch, name, step, *, source=None):
        """TREE_STEP: tag ``epoch`` as step ``step`` (int64) of tree ``name``."""
        self._emit(epoch, *body_tree_step(name, step), source)

    def append_record(self, record: LogRecord) -> None:
        """Append a (decoded or hand-made) record as a single record; keeps its epoch, and
        its timestamp/source when set. COMMIT records cannot be appended this way."""
        if isinstance(record, Commit) or not isinstance(record, LogRecord):
            raise InvalidArgumentError(f"cannot append {type(record).__name__}; use batch() for multi-record batches")
        epoch = check_epoch(record.epoch)
        kind, parts = record._body()
        rec = frame(epoch, kind, 0, record.timestamp or time.time_ns(), record.source or self.source, parts)
        self._push(epoch, [rec], len(rec), [kind])
