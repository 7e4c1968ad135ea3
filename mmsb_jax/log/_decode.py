"""TLog record format, read side: body decoding into the record types of :mod:`._records`.

The byte layout is specified in ``docs/tlog-format.md``; encoding and framing live in
:mod:`mmsb_jax.log._encode` and :mod:`mmsb_jax.log._framing`. Never pickles; no length or shape is trusted beyond the bytes present.
"""

from __future__ import annotations

import struct

import numpy as np

from ._encode import _ARR, _DEP, _Q, _QQ, _STR, BadRecord, Kind, dtype_from_name, pad8
from ._records import (
    Accumulate,
    AddDep,
    AddDeps,
    Commit,
    CreatePages,
    DeletePages,
    Dense,
    Derive,
    LogRecord,
    RemoveDep,
    RemoveDeps,
    Rows,
    Sparse,
    SparseBatch,
    TreeDef,
    TreeStep,
)

#: The most elements a ROWS record may write to one page (pages hold at most 2**31 elements).
MAX_ROWS_ELEMS = 2**31
_q = struct.Struct("<q")

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
