"""TLog record format, write side: record kinds, dtypes and body encoding.

The byte layout is specified in ``docs/tlog-format.md``; this module, :mod:`._framing`
(record and segment headers), :mod:`mmsb_jax.log._records` (decoded record types) and
:mod:`mmsb_jax.log._decode` (body decoding) are its only implementation. Pure Python + numpy + ``crc32c``; never pickles. All integers and array
data are little-endian; every record and every field block inside a body starts at an
8-byte aligned offset of its segment file, so decoded arrays are aligned zero-copy views.
"""

from __future__ import annotations

import enum
import struct
import sys
from typing import Any

import crc32c as _crc32c
import numpy as np

from .._checks import is_int
from .._errors import InvalidArgumentError

crc32c = _crc32c.crc32c

# --------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------

MAGIC = b"MMSBTLOG"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sHHIQQqI")  # + crc u32 -> 48 bytes
SEGMENT_HEADER_SIZE = 48
RECORD_HEADER = struct.Struct("<IIQqBBBBI")  # length, crc, epoch, timestamp, kind, flags, source_len, reserved, body_len
HEADER_SIZE = RECORD_HEADER.size  # 32
FLAG_BATCH = 0x01
MAX_RECORD_BYTES = 0xFFFF_FFF8  # largest multiple of 8 that fits the u32 length field
U64_MAX = (1 << 64) - 1

_U32 = struct.Struct("<I")
_ARR = struct.Struct("<BB6x")  # dtype-name length, ndim
_ARR1 = struct.Struct("<BB6xQ")  # a 1-D array block header with its one dim
_STR = struct.Struct("<I4x")  # utf-8 byte length
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_DEP = struct.Struct("<QQdB7x")  # parent, child, weight, has_weight
_q = struct.Struct("<q")
_ZEROS = bytes(8)
_I32 = np.dtype("<i4")
_LITTLE = sys.byteorder == "little"


class Kind(enum.IntEnum):
    """Record kinds (the ``kind`` byte of a record header)."""

    CREATE_PAGES = 1
    DELETE_PAGES = 2
    DENSE = 3
    SPARSE = 4
    SPARSE_BATCH = 5
    ACCUMULATE = 6
    ADD_DEP = 7
    REMOVE_DEP = 8
    COMMIT = 9
    ADD_DEPS = 10
    REMOVE_DEPS = 11
    DERIVE = 12
    ROWS = 13
    TREE_DEF = 14
    TREE_STEP = 15


KINDS = frozenset(int(k) for k in Kind)
_KIND_OBJ = {int(k): k for k in Kind}


class BadRecord(Exception):
    """Internal: a record (or segment header) fails a check; carries the reason."""


def pad8(n: int) -> int:
    return (-n) & 7


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------

_DTYPE_CACHE: dict[bytes, np.dtype] = {}


def _allowed(dt: np.dtype) -> bool:
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None or dt.itemsize == 0:
        return False
    if dt.kind in "biufc":
        return True
    # ml_dtypes scalars (bfloat16, float8_*, int4, ...) have kind 'V' but their own scalar type.
    return dt.kind == "V" and dt.type is not np.void


def dtype_from_name(name: str | bytes) -> np.dtype:
    """The little-endian numpy dtype for a stored dtype name; BadRecord if unknown/unsafe."""
    key = name if isinstance(name, bytes) else name.encode("ascii", "replace")
    dt = _DTYPE_CACHE.get(key)
    if dt is not None:
        return dt
    try:
        text = key.decode("ascii")
        if not text or not (text.replace("_", "").isalnum()):
            raise TypeError(text)
        try:
            dt = np.dtype(text)
        except TypeError:
            import ml_dtypes  # registers bfloat16, float8_*, int4, ... with numpy

            dt = np.dtype(getattr(ml_dtypes, text))
    except (TypeError, AttributeError, UnicodeDecodeError, ImportError) as e:
        raise BadRecord(f"unknown dtype name {key!r}") from e
    if not _allowed(dt) or dt.name != text:
        raise BadRecord(f"dtype {key!r} is not a plain numeric dtype")
    dt = dt.newbyteorder("<")
    _DTYPE_CACHE[key] = dt
    return dt


def dtype_name(dtype: Any) -> str:
    """Normalise a dtype-like (numpy/jax dtype, type, or name) to its stored name."""
    try:
        dt = dtype_from_name(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    except (TypeError, BadRecord) as e:
        raise InvalidArgumentError(f"dtype={dtype!r} is not a numpy dtype") from e
    if not _allowed(dt):
        raise InvalidArgumentError(f"dtype={dt!r} cannot be logged (only numeric dtypes)")
    return dt.name


# --------------------------------------------------------------------------------------------
# body encoding (each function returns a list of bytes-like parts, all 8-aligned in length)
# --------------------------------------------------------------------------------------------


_DT_BLOCK: dict[np.dtype, tuple[bytes, int, bool]] = {}
_SMALL = 4096  # arrays up to this many bytes are copied with tobytes(); larger ones as views


def _name_block(dt: np.dtype) -> tuple[bytes, int, bool]:
    """(padded dtype-name bytes, name length, needs byte swap) for an array block, cached."""
    got = _DT_BLOCK.get(dt)
    if got is None:
        if not _allowed(dt):
            raise InvalidArgumentError(f"array of dtype {dt!r} cannot be logged (only numeric dtypes)")
        name = dt.name.encode("ascii")
        swap = dt.byteorder == ">" or (dt.byteorder == "=" and not _LITTLE)
        got = _DT_BLOCK[dt] = (name + _ZEROS[: pad8(len(name))], len(name), swap)
    return got


def _arr_parts(arr: np.ndarray, parts: list) -> None:
    """Append an array block (header, shape, dtype name, C-order little-endian data)."""
    name, nl, swap = _name_block(arr.dtype)
    if swap:
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    shape = arr.shape
    nd = len(shape)
    if nd == 1:
        parts.append(_ARR1.pack(nl, 1, shape[0]))
    else:
        parts.append(_ARR.pack(nl, nd))
        if nd:
            parts.append(struct.pack(f"<{nd}Q", *shape))
    parts.append(name)
    nbytes = arr.nbytes
    if nbytes <= _SMALL:
        if nbytes:
            parts.append(arr.tobytes() + _ZEROS[: pad8(nbytes)] if nbytes & 7 else arr.tobytes())
    else:
        parts.append(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        if nbytes & 7:
            parts.append(_ZEROS[: pad8(nbytes)])


def _str_parts(s: str, parts: list, what: str) -> None:
    if not isinstance(s, str):
        raise InvalidArgumentError(f"{what}={s!r} must be a str")
    b = s.encode("utf-8")
    parts.append(_STR.pack(len(b)))
    if b:
        parts.append(b + _ZEROS[: pad8(len(b))])


def _u64(x: Any, what: str) -> int:
    try:
        v = int(x)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{what}={x!r} is not an integer") from e
    if v != x or not 0 <= v <= U64_MAX:
        raise InvalidArgumentError(f"{what}={x!r} is not an integer in [0, 2**64)")
    return v


def _ids(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind in "fb"):
        raise InvalidArgumentError(f"{what} must be an integer array, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.size and int(a.min()) < 0:
        raise InvalidArgumentError(f"{what} contains a negative id ({int(a.min())})")
    return a.astype("<u8", copy=False)


def _idx32(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind in "fb"):
        raise InvalidArgumentError(f"{what} must be an integer array, got dtype {a.dtype}")
    if a.dtype != np.int32 and a.size and (a.dtype.itemsize >= 4 or a.dtype.kind == "u"):
        lo, hi = int(a.min()), int(a.max())
        if lo < -(2**31) or hi >= 2**31:
            raise InvalidArgumentError(f"{what} has values outside int32 ({lo}..{hi})")
    return a.astype("<i4", copy=False)


def _shape(shape: Any) -> tuple[int, ...]:
    try:
        t = tuple(int(s) for s in ((shape,) if np.ndim(shape) == 0 else shape))
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"shape={shape!r} is not a tuple of ints") from e
    if any(s < 0 for s in t) or len(t) > 255:
        raise InvalidArgumentError(f"shape={shape!r} must have <= 255 non-negative dims")
    return t


_CREATE_TAIL: dict[tuple, bytes] = {}


def body_create_pages(first_page_id, count, shape, dtype, location="cpu", fill=None) -> tuple[int, list]:
    """CREATE_PAGES; ``fill`` (a scalar of the page dtype, or ``None`` for zeros) is an
    optional trailing one-element array block: every element of the new pages holds it."""
    if fill is not None:
        kind, parts = body_create_pages(first_page_id, count, shape, dtype, location)
        parts = list(parts)
        _arr_parts(np.asarray(fill, dtype_from_name(dtype_name(dtype))).reshape(1), parts)
        return kind, parts
    try:  # the (shape, dtype, location) tail repeats for every page of a pool: cache it
        key = (shape, dtype, location)
        tail = _CREATE_TAIL.get(key)
    except TypeError:
        key, tail = None, None
    if tail is None:
        parts: list = []
        _arr_parts(np.asarray(_shape(shape), dtype="<u8"), parts)
        _str_parts(dtype_name(dtype), parts, "dtype")
        _str_parts(location, parts, "location")
        tail = b"".join(bytes(p) for p in parts)
        if key is not None and len(_CREATE_TAIL) < 1024:
            _CREATE_TAIL[key] = tail
    return Kind.CREATE_PAGES, [_QQ.pack(_u64(first_page_id, "first_page_id"), _u64(count, "count")), tail]


def body_delete_pages(page_ids) -> tuple[int, list]:
    parts: list = []
    _arr_parts(_ids(page_ids, "page_ids").reshape(-1), parts)
    return Kind.DELETE_PAGES, parts


def body_dense(page_id, mask, values) -> tuple[int, list]:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise InvalidArgumentError(f"mask must be a bool array, got dtype {mask.dtype}")
    values = np.asarray(values)
    if values.shape == mask.shape:
        values = values[mask]  # full page payload -> the changed positions only
    elif values.ndim != 1 or values.shape[0] != int(np.count_nonzero(mask)):
        raise InvalidArgumentError(
            f"values shape {values.shape} is neither the page shape {mask.shape} "
            f"nor ({int(np.count_nonzero(mask))},) (one value per true mask entry)"
        )
    parts = [_Q.pack(_u64(page_id, "page_id"))]
    _arr_parts(np.asarray(mask.shape, dtype="<u8"), parts)
    _arr_parts(np.packbits(mask.reshape(-1)), parts)
    _arr_parts(values, parts)
    return Kind.DENSE, parts


_SHAPE_PART: dict[tuple, bytes] = {}


def body_dense_packed(page_id: int, shape: tuple, packed: np.ndarray, values: np.ndarray) -> tuple[int, list]:
    """DENSE body from an already packed mask (``np.packbits`` of the flat mask) and the
    changed values: the shell's fast path (``update_page``), same bytes as :func:`body_dense`.
    The caller guarantees ``len(values) == popcount(packed)``."""
    head = _SHAPE_PART.get(shape)
    if head is None:
        parts: list = []
        _arr_parts(np.asarray(shape, dtype="<u8"), parts)
        head = _SHAPE_PART[shape] = b"".join(bytes(p) for p in parts)
    parts = [_Q.pack(page_id), head]
    _arr_parts(packed, parts)
    _arr_parts(values, parts)
    return Kind.DENSE, parts


def body_sparse(page_id, indices, values) -> tuple[int, list]:
    idx = indices if type(indices) is np.ndarray and indices.dtype == _I32 else _idx32(indices, "indices")
    values = np.asarray(values)
    if idx.ndim != 1:
        idx = idx.reshape(-1)
    if values.ndim != 1:
        values = values.reshape(-1)
    if values.shape[0] != idx.shape[0]:
        raise InvalidArgumentError(f"{idx.shape[0]} indices but {values.shape[0]} values")
    pid = page_id if type(page_id) is int and 0 <= page_id <= U64_MAX else _u64(page_id, "page_id")
    parts = [_Q.pack(pid)]
    _arr_parts(idx, parts)
    _arr_parts(values, parts)
    return Kind.SPARSE, parts


def body_sparse_batch(page_ids, indices, values) -> tuple[int, list]:
    pids = _ids(page_ids, "page_ids")
    idx = _idx32(indices, "indices")
    values = np.asarray(values)
    if pids.ndim != 1 or idx.ndim != 2 or values.shape != idx.shape or idx.shape[0] != pids.shape[0]:
        raise InvalidArgumentError(
            f"sparse batch needs page_ids (n,), indices (n, k), values (n, k); got "
            f"{pids.shape}, {idx.shape}, {values.shape}"
        )
    parts: list = []
    _arr_parts(pids, parts)
    _arr_parts(shared_row(idx), parts)
    _arr_parts(values, parts)
    return Kind.SPARSE_BATCH, parts


def shared_row(indices: np.ndarray) -> np.ndarray:
    """``indices[:1]`` when every row of ``indices`` (n, k) equals the first (e.g. whole-page
    rewrites, ``0 .. k-1`` in every row), else ``indices``: SPARSE_BATCH logs one shared row
    instead of n equal ones (docs/tlog-format.md).

    Example:
      >>> import numpy as np
      >>> shared_row(np.tile(np.arange(4, dtype=np.int32), (3, 1))).shape
      (1, 4)
      >>> shared_row(np.array([[0, 1], [1, 0]], np.int32)).shape
      (2, 2)
    """
    n = indices.shape[0]
    if n < 2 or indices.shape[1] == 0:
        return indices
    first = indices[0]
    # a few rows first: batches of scattered rows are told apart in O(k)
    if not (np.array_equal(indices[-1], first) and np.array_equal(indices[n // 2], first)):
        return indices
    return indices[:1] if bool((indices == first).all()) else indices


def body_accumulate(page_id, semiring, payload) -> tuple[int, list]:
    parts = [_Q.pack(_u64(page_id, "page_id"))]
    _str_parts(semiring, parts, "semiring")
    _arr_parts(np.asarray(payload), parts)
    return Kind.ACCUMULATE, parts


def body_add_dep(parent, child, weight=None, edge_type="") -> tuple[int, list]:
    if weight is None:
        w, has = 0.0, 0
    else:
        try:
            w, has = float(weight), 1
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"weight={weight!r} is not a float or None") from e
    parts = [_DEP.pack(_u64(parent, "parent"), _u64(child, "child"), w, has)]
    _str_parts(edge_type, parts, "edge_type")
    return Kind.ADD_DEP, parts


def body_remove_dep(parent, child) -> tuple[int, list]:
    return Kind.REMOVE_DEP, [_QQ.pack(_u64(parent, "parent"), _u64(child, "child"))]


def _dep_ends(parents, children) -> tuple[np.ndarray, np.ndarray]:
    u, v = _ids(parents, "parents").reshape(-1), _ids(children, "children").reshape(-1)
    if u.shape != v.shape:
        raise InvalidArgumentError(f"parents and children differ in length ({u.shape[0]} vs {v.shape[0]})")
    return u, v


def body_add_deps(parents, children, weights=None, edge_type="") -> tuple[int, list]:
    """ADD_DEPS: edges ``parents[i] -> children[i]`` of one ``edge_type``; ``weights`` (n,)
    float64 where NaN is the semiring's one (or ``None``: every weight is the one)."""
    u, v = _dep_ends(parents, children)
    w = np.full(u.shape, np.nan) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.shape != u.shape:
        raise InvalidArgumentError(f"{u.shape[0]} edges need {u.shape[0]} weights, got {w.shape[0]}")
    parts: list = []
    _arr_parts(u, parts)
    _arr_parts(v, parts)
    _arr_parts(w.astype("<f8", copy=False), parts)
    _str_parts(edge_type, parts, "edge_type")
    return Kind.ADD_DEPS, parts


def body_remove_deps(parents, children) -> tuple[int, list]:
    """REMOVE_DEPS: edges ``parents[i] -> children[i]``."""
    u, v = _dep_ends(parents, children)
    parts: list = []
    _arr_parts(u, parts)
    _arr_parts(v, parts)
    return Kind.REMOVE_DEPS, parts


def body_derive(child, name, parents) -> tuple[int, list]:
    """DERIVE: page ``child`` is ``fn(*parents)`` for the function registered as ``name``."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"derive name={name!r} must be a non-empty str")
    parts = [_Q.pack(_u64(child, "child"))]
    _str_parts(name, parts, "name")
    _arr_parts(_ids(parents, "parents").reshape(-1), parts)
    return Kind.DERIVE, parts


def body_commit(count: int) -> tuple[int, list]:
    return Kind.COMMIT, [_Q.pack(count)]


def body_rows(page_id, row_len, rows, values) -> tuple[int, list]:
    """ROWS: rows ``rows[i]`` of ``row_len`` elements of the flat page are overwritten by the
    ``i``-th chunk of ``values``; ``rows=[0], row_len=page size`` is a whole-page write."""
    idx = rows if type(rows) is np.ndarray and rows.dtype == _I32 else _idx32(rows, "rows")
    idx = idx.reshape(-1)
    values = np.asarray(values).reshape(-1)
    n = _u64(row_len, "row_len")
    if n < 1:
        raise InvalidArgumentError(f"row_len={row_len!r} must be >= 1")
    if values.shape[0] != idx.shape[0] * n:
        raise InvalidArgumentError(
            f"{idx.shape[0]} rows of row_len={n} need {idx.shape[0] * n} values, got {values.shape[0]}"
        )
    if idx.size and int(idx.min()) < 0:
        raise InvalidArgumentError(f"rows holds a negative row index ({int(idx.min())})")
    parts = [_QQ.pack(_u64(page_id, "page_id"), n)]
    _arr_parts(idx, parts)
    _arr_parts(values, parts)
    return Kind.ROWS, parts


def body_tree_def(name, structure, page_ids) -> tuple[int, list]:
    """TREE_DEF: a tree's ``name``, its ``structure`` (canonical JSON, no code) and the page
    of each leaf, in leaf order."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"tree name={name!r} must be a non-empty str")
    parts: list = []
    _str_parts(name, parts, "name")
    _str_parts(structure, parts, "structure")
    _arr_parts(_ids(page_ids, "page_ids").reshape(-1), parts)
    return Kind.TREE_DEF, parts


def body_tree_step(name, step) -> tuple[int, list]:
    """TREE_STEP: the epoch (batch) it belongs to is step ``step`` of the tree ``name``."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"tree name={name!r} must be a non-empty str")
    if not is_int(step) or not -(2**63) <= int(step) < 2**63:
        raise InvalidArgumentError(f"step={step!r} must be an int64")
    parts = [_q.pack(int(step))]
    _str_parts(name, parts, "name")
    return Kind.TREE_STEP, parts


def kind_of(k: Any) -> Kind:
    """A Kind from a Kind, an int or a (case-insensitive) name."""
    try:
        if isinstance(k, str):
            return Kind[k.upper()]
        return _KIND_OBJ[int(k)]
    except (KeyError, ValueError, TypeError) as e:
        raise InvalidArgumentError(f"unknown record kind {k!r}") from e
