"""TLog record format, read side: the decoded record types and body decoding.

The byte layout is specified in ``docs/tlog-format.md``; encoding and framing live in
:mod:`mmsb_jax.log._encode`. Never pickles; no length or shape is trusted beyond the bytes present.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, ClassVar

import numpy as np

from ._encode import (
    _ARR,
    _DEP,
    _Q,
    _QQ,
    _STR,
    U64_MAX,
    BadRecord,
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
    dtype_from_name,
    pad8,
)

#: The most elements a ROWS record may write to one page (pages hold at most 2**31 elements).
MAX_ROWS_ELEMS = 2**31
_q = struct.Struct("<q")

# --------------------------------------------------------------------------------------------
# decoded records
# --------------------------------------------------------------------------------------------


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

# --------------------------------------------------------------------------------------------
# body decoding
# --------------------------------------------------------------------------------------------


_DT_BY_WORD: dict[int, np.dtype] = {}


def _rd_arr(buf: bytes, p: int, end: int, copy: bool) -> tuple[np.ndarray, int]:
    """Decode the array block at ``p`` (bounds-checked against ``end``); returns (array, next)."""
    if p + 16 > end:
        raise BadRecord("array block past the end of the body")
    nl, nd = _ARR.unpack_from(buf, p)
    if nd == 1:
        count = _Q.unpack_from(buf, p + 8)[0]
        shape = None
        q = p + 16
    else:
        q = p + 8 + 8 * nd
        if q > end:
            raise BadRecord("array block past the end of the body")
        shape = struct.unpack_from(f"<{nd}Q", buf, p + 8) if nd else ()
        count = 1
        for s in shape:
            count *= s
    p = q + nl + ((-nl) & 7)
    if p > end or nl == 0:
        raise BadRecord("array block past the end of the body")
    if nl <= 8:
        word = _Q.unpack_from(buf, q)[0] | (nl << 64) if q + 8 <= end else -1
        dt = _DT_BY_WORD.get(word)
        if dt is None:
            dt = dtype_from_name(buf[q : q + nl])
            if word >= 0:
                _DT_BY_WORD[word] = dt
    else:
        dt = dtype_from_name(buf[q : q + nl])
    nbytes = count * dt.itemsize
    if p + nbytes > end:
        raise BadRecord(f"array of {count} x {dt.name} ({nbytes} bytes) exceeds the record body")
    if count == 0:
        arr = np.empty(shape if shape is not None else (0,), dt)
    else:
        arr = np.frombuffer(buf, dt, count, p)
        if shape is not None and nd != 1:
            arr = arr.reshape(shape)
        if copy:
            arr = arr.copy()
    return arr, p + nbytes + ((-nbytes) & 7)


def _rd_str(buf: bytes, p: int, end: int) -> tuple[str, int]:
    if p + 8 > end:
        raise BadRecord("string block past the end of the body")
    (n,) = _STR.unpack_from(buf, p)
    p += 8
    if p + n > end:
        raise BadRecord("string block past the end of the body")
    try:
        s = bytes(buf[p : p + n]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord("string block is not utf-8") from e
    return s, p + n + pad8(n)


def _need(p: int, n: int, end: int) -> None:
    if p + n > end:
        raise BadRecord("fixed body fields past the end of the body")


def decode_body(kind: int, buf: bytes, p: int, end: int, copy: bool, common: dict) -> LogRecord:
    """Decode the body ``buf[p:end]`` of a record of ``kind``; BadRecord if inconsistent."""
    if kind == Kind.SPARSE_BATCH:
        pids, p = _rd_arr(buf, p, end, copy)
        idx, p = _rd_arr(buf, p, end, copy)
        vals, p = _rd_arr(buf, p, end, copy)
        if (
            pids.dtype != np.uint64
            or idx.dtype != np.int32
            or pids.ndim != 1
            or idx.ndim != 2
            or vals.ndim != 2
            or vals.shape[0] != pids.shape[0]
            or idx.shape[1] != vals.shape[1]
            or idx.shape[0] not in (vals.shape[0], 1)
        ):
            raise BadRecord("inconsistent SPARSE_BATCH arrays")
        if idx.shape[0] != vals.shape[0]:  # one row shared by every delta (read-only view)
            idx = np.broadcast_to(idx, vals.shape)
        return SparseBatch(page_ids=pids, indices=idx, values=vals, **common)
    if kind == Kind.SPARSE:
        _need(p, 8, end)
        (pid,) = _Q.unpack_from(buf, p)
        idx, p = _rd_arr(buf, p + 8, end, copy)
        vals, p = _rd_arr(buf, p, end, copy)
        if idx.dtype != np.int32 or idx.ndim != 1 or vals.shape != idx.shape:
            raise BadRecord("inconsistent SPARSE arrays")
        return Sparse(page_id=pid, indices=idx, values=vals, **common)
    if kind == Kind.DENSE:
        _need(p, 8, end)
        (pid,) = _Q.unpack_from(buf, p)
        shp, p = _rd_arr(buf, p + 8, end, False)
        packed, p = _rd_arr(buf, p, end, False)
        vals, p = _rd_arr(buf, p, end, copy)
        if shp.dtype != np.uint64 or shp.ndim != 1 or packed.dtype != np.uint8 or vals.ndim != 1:
            raise BadRecord("inconsistent DENSE arrays")
        shape = tuple(int(s) for s in shp)
        size = 1
        for s in shape:
            size *= s
        if packed.shape[0] != (size + 7) // 8:
            raise BadRecord("DENSE mask size does not match the page shape")
        mask = np.unpackbits(packed, count=size).view(np.bool_).reshape(shape)
        if int(np.count_nonzero(mask)) != vals.shape[0]:
            raise BadRecord("DENSE value count does not match the mask")
        return Dense(page_id=pid, mask=mask, values=vals, **common)
    if kind == Kind.ACCUMULATE:
        _need(p, 8, end)
        (pid,) = _Q.unpack_from(buf, p)
        sr, p = _rd_str(buf, p + 8, end)
        payload, p = _rd_arr(buf, p, end, copy)
        return Accumulate(page_id=pid, semiring=sr, payload=payload, **common)
    if kind == Kind.CREATE_PAGES:
        _need(p, 16, end)
        first, count = _QQ.unpack_from(buf, p)
        shp, p = _rd_arr(buf, p + 16, end, False)
        dt, p = _rd_str(buf, p, end)
        loc, p = _rd_str(buf, p, end)
        if shp.dtype != np.uint64 or shp.ndim != 1:
            raise BadRecord("inconsistent CREATE_PAGES shape")
        dtype_from_name(dt)
        shape = tuple(int(s) for s in shp)
        fill = None
        if p < end:  # the optional fill value
            f, p = _rd_arr(buf, p, end, True)
            if f.shape != (1,) or f.dtype != dtype_from_name(dt):
                raise BadRecord(f"CREATE_PAGES fill is {f.dtype}{f.shape}, not one {dt} value")
            fill = f[0]
        return CreatePages(first_page_id=first, count=count, shape=shape, dtype=dt, location=loc, fill=fill,
                           **common)
    if kind == Kind.DELETE_PAGES:
        pids, p = _rd_arr(buf, p, end, copy)
        if pids.dtype != np.uint64 or pids.ndim != 1:
            raise BadRecord("inconsistent DELETE_PAGES ids")
        return DeletePages(page_ids=pids, **common)
    if kind == Kind.ADD_DEP:
        _need(p, _DEP.size, end)
        parent, child, w, has = _DEP.unpack_from(buf, p)
        et, p = _rd_str(buf, p + _DEP.size, end)
        return AddDep(parent=parent, child=child, weight=w if has else None, edge_type=et, **common)
    if kind == Kind.REMOVE_DEP:
        _need(p, 16, end)
        parent, child = _QQ.unpack_from(buf, p)
        return RemoveDep(parent=parent, child=child, **common)
    if kind in (Kind.ADD_DEPS, Kind.REMOVE_DEPS):
        u, p = _rd_arr(buf, p, end, copy)
        v, p = _rd_arr(buf, p, end, copy)
        if u.dtype != np.uint64 or v.dtype != np.uint64 or u.ndim != 1 or v.shape != u.shape:
            raise BadRecord(f"inconsistent {Kind(kind).name} ends")
        if kind == Kind.REMOVE_DEPS:
            return RemoveDeps(parents=u, children=v, **common)
        w, p = _rd_arr(buf, p, end, copy)
        if w.dtype != np.float64 or w.shape != u.shape:
            raise BadRecord("inconsistent ADD_DEPS weights")
        et, p = _rd_str(buf, p, end)
        return AddDeps(parents=u, children=v, weights=w, edge_type=et, **common)
    if kind == Kind.DERIVE:
        _need(p, 8, end)
        (child,) = _Q.unpack_from(buf, p)
        name, p = _rd_str(buf, p + 8, end)
        parents, p = _rd_arr(buf, p, end, copy)
        if not name or parents.dtype != np.uint64 or parents.ndim != 1:
            raise BadRecord("inconsistent DERIVE fields")
        return Derive(child=child, name=name, parents=parents, **common)
    if kind == Kind.COMMIT:
        _need(p, 8, end)
        return Commit(count=_Q.unpack_from(buf, p)[0], **common)
    if kind == Kind.ROWS:
        _need(p, 16, end)
        pid, row_len = _QQ.unpack_from(buf, p)
        if not 1 <= row_len <= MAX_ROWS_ELEMS:
            raise BadRecord(f"ROWS row_len={row_len} is outside [1, 2**31]")
        rows, p = _rd_arr(buf, p + 16, end, copy)
        vals, p = _rd_arr(buf, p, end, copy)
        if rows.dtype != np.int32 or rows.ndim != 1 or vals.ndim != 1:
            raise BadRecord("inconsistent ROWS arrays")
        if rows.shape[0] * row_len != vals.shape[0] or vals.shape[0] > MAX_ROWS_ELEMS:
            raise BadRecord(f"ROWS holds {vals.shape[0]} values for {rows.shape[0]} rows of {row_len}")
        if rows.size and int(rows.min()) < 0:
            raise BadRecord("ROWS has a negative row index")
        return Rows(page_id=pid, row_len=row_len, rows=rows, values=vals, **common)
    if kind == Kind.TREE_DEF:
        name, p = _rd_str(buf, p, end)
        structure, p = _rd_str(buf, p, end)
        pids, p = _rd_arr(buf, p, end, copy)
        if not name or pids.dtype != np.uint64 or pids.ndim != 1:
            raise BadRecord("inconsistent TREE_DEF fields")
        return TreeDef(name=name, structure=structure, page_ids=pids, **common)
    if kind == Kind.TREE_STEP:
        _need(p, 8, end)
        (step,) = _q.unpack_from(buf, p)
        name, p = _rd_str(buf, p + 8, end)
        if not name:
            raise BadRecord("TREE_STEP without a tree name")
        return TreeStep(name=name, step=step, **common)
    raise BadRecord(f"unknown record kind {kind}")
