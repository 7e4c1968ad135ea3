"""Fingerprints of operation arguments: what the processes of a distributed state compare to
agree that they run the same operation (see :mod:`mmsb_jax.shell._distributed`)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types

import jax
import numpy as np

from ..semirings import Semiring


def fingerprint(*values) -> str:
    """A hex fingerprint of ``values``: their structure (types, shapes, dtypes, scalars) under
    SHA-256, each array's bytes under CRC-32C (hardware speed; a random difference slips
    through one operation with probability 2**-32)."""
    h = hashlib.sha256()
    _feed(h, values)
    return h.hexdigest()[:32]


def _feed(h, x) -> None:
    import crc32c

    if x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
        h.update(repr((type(x).__name__, x)).encode())
    elif isinstance(x, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(x)
        h.update(repr(("array", a.dtype.str, a.shape)).encode())
        raw = a.reshape(-1).view(np.uint8)
        h.update(raw.tobytes() if raw.size <= 256 else crc32c.crc32c(raw).to_bytes(4, "little"))
    elif isinstance(x, jax.Array):
        if x.is_fully_addressable or x.is_fully_replicated:
            _feed(h, np.asarray(x))
        else:  # one global value, of which each process holds its part
            h.update(repr(("global", str(x.dtype), x.shape, str(x.sharding))).encode())
    elif isinstance(x, Semiring):
        h.update(repr(("semiring", x.name)).encode())
    elif isinstance(x, (list, tuple)):
        h.update(repr((type(x).__name__, len(x))).encode())
        for v in x:
            _feed(h, v)
    elif isinstance(x, dict):
        h.update(repr(("dict", len(x))).encode())
        for k in sorted(x, key=repr):
            _feed(h, k)
            _feed(h, x[k])
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):  # deltas, rings
        h.update(type(x).__qualname__.encode())
        for f in dataclasses.fields(x):
            _feed(h, getattr(x, f.name))
    elif hasattr(x, "id") and type(x).__name__ == "Page":
        h.update(repr(("page", x.id)).encode())
    elif isinstance(x, np.dtype) or isinstance(x, type):
        h.update(repr(("type", str(np.dtype(x)) if _is_dtype(x) else x.__qualname__)).encode())
    elif isinstance(x, functools.partial):
        h.update(b"partial")
        _feed(h, (x.func, x.args, x.keywords))
    elif callable(x):  # its name and, for a Python function, its code: two lambdas differ
        h.update(repr(("callable", getattr(x, "__qualname__", type(x).__qualname__))).encode())
        code = getattr(x, "__code__", None)
        if isinstance(code, types.CodeType):
            _feed_code(h, code)
            # what it captured and its defaults (``lambda x: x * k`` with another k differs); a
            # captured function by name only (a recursive function captures itself)
            cells = [c.cell_contents for c in (getattr(x, "__closure__", None) or ()) if _filled(c)]
            _feed(h, [_name_of(v) if callable(v) else v for v in cells])
            _feed(h, getattr(x, "__defaults__", None))
    else:  # anything else by its type alone (its repr may hold memory addresses)
        h.update(repr(("object", type(x).__qualname__)).encode())


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a cell not yet bound
        return False
    return True


def _name_of(f) -> str:
    return "callable " + getattr(f, "__qualname__", type(f).__qualname__)


def _feed_code(h, code: types.CodeType) -> None:
    """A function's bytecode, the names it uses and its constants (nested code too): the same
    source gives the same code in every process of one Python version."""
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames)).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _feed_code(h, c)
        else:
            h.update(_const_repr(c).encode())


def _const_repr(c) -> str:
    """A code constant's repr, the same in every process (a frozenset's order follows the
    process's string hash seed: sorted here)."""
    if isinstance(c, frozenset):
        return "frozenset(" + ",".join(sorted(_const_repr(v) for v in c)) + ")"
    if isinstance(c, tuple):
        return "(" + ",".join(_const_repr(v) for v in c) + ")"
    return repr((type(c).__name__, c))


def _is_dtype(x) -> bool:
    try:
        np.dtype(x)
    except TypeError:
        return False
    return True
