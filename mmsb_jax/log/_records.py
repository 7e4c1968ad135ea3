"""The decoded TLog record types: one frozen-shape dataclass per record kind, each able to
re-encode its body (``_body``) and to say which pages it touches. Decoding bodies into them
is :mod:`._decode`'s; the byte layout is specified in ``docs/tlog-format.md``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from ._encode import (
    U64_MAX,
    Kind,
    body_accumulate,
    body_add_dep,
    body_add_deps,
    body_commit,
    body_create_pages,
    body_delete_pages,
    body_dense,
    body_derive,
    body_remove_dep,
    body_remove_deps,
    body_rows,
    body_sparse,
    body_sparse_batch,
    body_tree_def,
    body_tree_step,
)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class LogRecord:
    """One decoded log record. Subclasses add the kind-specific body fields.

    ``segment``/``offset`` locate the record on disk (-1 when not read from disk); they are
    ignored by ``==``. Arrays read with ``copy=False`` are read-only views of the segment bytes.
    """

    kind: ClassVar[Kind]
    epoch: int
    timestamp: int = 0
    source: str = ""
    batched: bool = False
    segment: int = -1
    offset: int = -1

    def touches(self, page_id: int) -> bool:
        """Whether this record changes (or creates/deletes) ``page_id``."""
        return False

    def _body(self) -> tuple[int, list]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            if f.name in ("segment", "offset"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                a, b = np.asarray(a), np.asarray(b)
                if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class CreatePages(LogRecord):
    kind: ClassVar[Kind] = Kind.CREATE_PAGES
    first_page_id: int
    count: int
    shape: tuple
    dtype: str
    location: str
    fill: Any = None  # a scalar of the page dtype every element starts at; None: zeros

    @property
    def page_ids(self) -> range:
        return range(self.first_page_id, self.first_page_id + self.count)

    def touches(self, page_id: int) -> bool:
        return self.first_page_id <= page_id < self.first_page_id + self.count

    def _body(self):
        return body_create_pages(self.first_page_id, self.count, self.shape, self.dtype, self.location, self.fill)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class DeletePages(LogRecord):
    kind: ClassVar[Kind] = Kind.DELETE_PAGES
    page_ids: np.ndarray

    def touches(self, page_id: int) -> bool:
        return 0 <= page_id <= U64_MAX and bool(np.any(self.page_ids == np.uint64(page_id)))

    def _body(self):
        return body_delete_pages(self.page_ids)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class Dense(LogRecord):
    """``mask`` has the page shape; ``values`` holds only the changed positions (C order)."""

    kind: ClassVar[Kind] = Kind.DENSE
    page_id: int
    mask: np.ndarray
    values: np.ndarray

    @property
    def shape(self) -> tuple:
        return self.mask.shape

    def payload(self, fill=0) -> np.ndarray:
        """The full-page payload: ``values`` at the masked positions, ``fill`` elsewhere."""
        out = np.full(self.mask.shape, fill, dtype=self.values.dtype)
        out[self.mask] = self.values
        return out

    def touches(self, page_id: int) -> bool:
        return self.page_id == page_id

    def _body(self):
        return body_dense(self.page_id, self.mask, self.values)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class Sparse(LogRecord):
    kind: ClassVar[Kind] = Kind.SPARSE
    page_id: int
    indices: np.ndarray
    values: np.ndarray

    def touches(self, page_id: int) -> bool:
        return self.page_id == page_id

    def _body(self):
        return body_sparse(self.page_id, self.indices, self.values)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class SparseBatch(LogRecord):
    """Row ``i`` is a sparse delta ``(indices[i], values[i])`` to page ``page_ids[i]``.

    A record that logged one index row shared by every delta decodes ``indices`` as a
    read-only broadcast view of shape ``values.shape``."""

    kind: ClassVar[Kind] = Kind.SPARSE_BATCH
    page_ids: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def touches(self, page_id: int) -> bool:
        return 0 <= page_id <= U64_MAX and bool(np.any(self.page_ids == np.uint64(page_id)))

    def _body(self):
        return body_sparse_batch(self.page_ids, self.indices, self.values)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class Accumulate(LogRecord):
    kind: ClassVar[Kind] = Kind.ACCUMULATE
    page_id: int
    semiring: str
    payload: np.ndarray

    def touches(self, page_id: int) -> bool:
        return self.page_id == page_id

    def _body(self):
        return body_accumulate(self.page_id, self.semiring, self.payload)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class AddDep(LogRecord):
    """``weight is None`` means the semiring's one."""

    kind: ClassVar[Kind] = Kind.ADD_DEP
    parent: int
    child: int
    weight: float | None = None
    edge_type: str = ""

    def touches(self, page_id: int) -> bool:
        return page_id in (self.parent, self.child)

    def _body(self):
        return body_add_dep(self.parent, self.child, self.weight, self.edge_type)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class RemoveDep(LogRecord):
    kind: ClassVar[Kind] = Kind.REMOVE_DEP
    parent: int
    child: int

    def touches(self, page_id: int) -> bool:
        return page_id in (self.parent, self.child)

    def _body(self):
        return body_remove_dep(self.parent, self.child)


def _touches_any(page_id: int, *arrays) -> bool:
    return 0 <= page_id <= U64_MAX and any(bool(np.any(a == np.uint64(page_id))) for a in arrays)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class AddDeps(LogRecord):
    """Edges ``parents[i] -> children[i]`` in one epoch; a NaN weight is the semiring's one."""

    kind: ClassVar[Kind] = Kind.ADD_DEPS
    parents: np.ndarray
    children: np.ndarray
    weights: np.ndarray
    edge_type: str = ""

    def touches(self, page_id: int) -> bool:
        return _touches_any(page_id, self.parents, self.children)

    def _body(self):
        return body_add_deps(self.parents, self.children, self.weights, self.edge_type)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class RemoveDeps(LogRecord):
    kind: ClassVar[Kind] = Kind.REMOVE_DEPS
    parents: np.ndarray
    children: np.ndarray

    def touches(self, page_id: int) -> bool:
        return _touches_any(page_id, self.parents, self.children)

    def _body(self):
        return body_remove_deps(self.parents, self.children)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class Derive(LogRecord):
    """Page ``child`` is computed by the function registered as ``name`` from ``parents``."""

    kind: ClassVar[Kind] = Kind.DERIVE
    child: int
    name: str
    parents: np.ndarray

    def touches(self, page_id: int) -> bool:
        return page_id == self.child or _touches_any(page_id, self.parents)

    def _body(self):
        return body_derive(self.child, self.name, self.parents)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class Commit(LogRecord):
    """End of a multi-record batch: ``count`` records of this epoch precede it."""

    kind: ClassVar[Kind] = Kind.COMMIT
    count: int

    def _body(self):
        return body_commit(self.count)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class Rows(LogRecord):
    """Row ``rows[i]`` (``row_len`` elements) of the flat page becomes ``values[i*row_len:(i+1)*row_len]``.

    ``rows=[0]`` with ``row_len`` = the page size is a whole-page write (raw bytes, no index).
    """

    kind: ClassVar[Kind] = Kind.ROWS
    page_id: int
    row_len: int
    rows: np.ndarray
    values: np.ndarray

    def touches(self, page_id: int) -> bool:
        return self.page_id == page_id

    def _body(self):
        return body_rows(self.page_id, self.row_len, self.rows, self.values)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class TreeDef(LogRecord):
    """A journaled pytree: its ``name``, ``structure`` (canonical JSON) and leaf ``page_ids``."""

    kind: ClassVar[Kind] = Kind.TREE_DEF
    name: str
    structure: str
    page_ids: np.ndarray

    def touches(self, page_id: int) -> bool:
        return 0 <= page_id <= U64_MAX and bool(np.any(self.page_ids == np.uint64(page_id)))

    def _body(self):
        return body_tree_def(self.name, self.structure, self.page_ids)


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class TreeStep(LogRecord):
    """The tag of an epoch: it is step ``step`` of the tree ``name``."""

    kind: ClassVar[Kind] = Kind.TREE_STEP
    name: str
    step: int

    def _body(self):
        return body_tree_step(self.name, self.step)


RECORD_TYPES: dict[Kind, type[LogRecord]] = {
    cls.kind: cls
    for cls in (CreatePages, DeletePages, Dense, Sparse, SparseBatch, Accumulate, AddDep, RemoveDep, Commit,
                AddDeps, RemoveDeps, Derive, Rows, TreeDef, TreeStep)
}
