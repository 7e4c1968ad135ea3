"""A checkpoint's small arrays packed into one: the page table, the epoch, the dependencies
and the trees' step maps travel as one ``uint8`` array ``tables`` beside the pools.

orbax pays for every array it restores, whatever its size; a checkpoint of a state with a
tree held eight small arrays beside its pools (restoring the embedding benchmark's 25 MB
checkpoint took 53-55 ms packed, 56-59 ms unpacked, this machine). Packed, they cost one. The manifest lists each array's key, dtype, shape and byte
offset (``"tables"``); the packed bytes are covered by a CRC-32C like every other array, and
unpacking never trusts the layout: every entry must be one of the arrays a checkpoint packs,
1-D, in the dtype the writer uses for it, and lie inside the packed bytes, in order, each at
an 8-byte boundary.

Example:
  >>> import numpy as np
  >>> packed, layout = pack_tables({"epoch": np.array([7], np.int64),
  ...                               "page_table": {"id": np.arange(3), "pool": np.zeros(3, np.int32)}})
  >>> sorted(packed), packed["tables"].dtype.name, [e["key"] for e in layout]
  (['tables'], 'uint8', ['epoch', 'page_table/id', 'page_table/pool'])
  >>> unpack_tables(packed, layout, "ckpt")["page_table"]["id"].tolist()
  [0, 1, 2]
"""

from __future__ import annotations

import math
import re

import numpy as np

from .._checks import is_int
from .._errors import SerializationError
from ._encode import dtype_from_name

TABLES = "tables"
POOLS = "pools"
_ALIGN = 8

#: Every array a checkpoint packs, by key, with the one dtype it is written in: the layout is
#: in the manifest, and a dtype edited there (float64 weights read as int64, same bytes) would
#: pass every checksum, so the layout may only say what the writer would have said.
_SCHEMA = [
    (re.compile(r"epoch"), "int64"),
    (re.compile(r"page_table/(id|slot|epoch)"), "int64"),
    (re.compile(r"page_table/pool"), "int32"),
    (re.compile(r"graph/(parent|child)"), "int64"),
    (re.compile(r"graph/weight"), "float64"),
    (re.compile(r"graph/type"), "int32"),
    (re.compile(r"trees/tree_[0-9]+/structure"), "uint8"),
    (re.compile(r"trees/tree_[0-9]+/(steps|epochs)"), "int64"),
]


def _schema_dtype(key: str) -> str | None:
    return next((d for pattern, d in _SCHEMA if pattern.fullmatch(key)), None)


def leaves_by_key(tree, prefix=""):
    """``(key, leaf)`` of a checkpoint tree, keys as ``"group/name"``, in sorted order."""
    for k in sorted(tree):
        v = tree[k]
        if isinstance(v, dict):
            yield from leaves_by_key(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def pack_tables(tree: dict) -> tuple[dict, list[dict]]:
    """``tree`` with every array outside ``"pools"`` packed into ``tree["tables"]`` (little
    endian, each at an 8-byte boundary), and the layout the manifest keeps for unpacking."""
    out = {POOLS: tree[POOLS]} if POOLS in tree else {}
    layout, chunks, offset = [], [], 0
    for key, value in leaves_by_key({k: v for k, v in tree.items() if k != POOLS}):
        a = np.asarray(value)
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
        raw = a.reshape(-1).view(np.uint8)
        layout.append({"key": key, "dtype": a.dtype.name, "shape": list(a.shape), "offset": offset})
        chunks.append(raw)
        pad = -raw.size % _ALIGN
        if pad:
            chunks.append(np.zeros(pad, np.uint8))
        offset += raw.size + pad
    if chunks:
        out[TABLES] = np.concatenate(chunks)
    return out, layout


def unpack_tables(tree: dict, layout, directory: str) -> dict:
    """The arrays of ``tree["tables"]`` (already checked against its CRC-32C) back in their
    groups, as ``layout`` (the manifest's ``"tables"``) lists them; ``"pools"`` as it was.

    Raises:
      SerializationError: the layout is malformed or does not fit the packed bytes.
    """

    def bad(msg):
        raise SerializationError(f"checkpoint {directory!r}: its packed tables are inconsistent: {msg}")

    packed = tree.get(TABLES)
    if not isinstance(layout, list):
        bad(f"manifest field tables={layout!r} is not a list")
    if layout and (not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1):
        bad(f"the tables array is {getattr(packed, 'dtype', None)}{getattr(packed, 'shape', '')}, not 1-D uint8")
    out = {k: v for k, v in tree.items() if k != TABLES}
    end = 0
    for entry in layout:
        if not isinstance(entry, dict) or sorted(entry) != ["dtype", "key", "offset", "shape"]:
            bad(f"entry {entry!r} is not {{key, dtype, shape, offset}}")
        key, name, shape, offset = entry["key"], entry["dtype"], entry["shape"], entry["offset"]
        parts = key.split("/") if isinstance(key, str) else []
        want = _schema_dtype(key) if isinstance(key, str) else None
        if want is None:
            bad(f"entry key {key!r} is not one a checkpoint packs")
        if not (isinstance(shape, list) and len(shape) == 1 and is_int(shape[0]) and shape[0] >= 0):
            bad(f"entry {key!r} has shape {shape!r}, not [n] with n >= 0")
        if name != want:
            bad(f"entry {key!r} has dtype {name!r}; a checkpoint writes it as {want}")
        dtype = dtype_from_name(want)
        size = math.prod(int(n) for n in shape) * dtype.itemsize  # (Python ints: no overflow)
        if not is_int(offset) or offset < end or offset % _ALIGN or offset + size > packed.size:
            bad(f"entry {key!r} at offset {offset!r} ({size} bytes) does not lie in order inside the "
                f"{packed.size} packed bytes")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                bad(f"entry {key!r} lies below an array")
        if parts[-1] in node:
            bad(f"entry {key!r} is listed twice")
        node[parts[-1]] = packed[offset : offset + size].view(dtype).reshape(shape).copy()
        end = offset + size
    return out
