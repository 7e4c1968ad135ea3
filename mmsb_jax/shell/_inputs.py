"""What the shell accepts: page ids, page data and deltas, checked and normalised before
anything changes, so that what a state applies is exactly what it logs (and replays).

Arrays are never cast: a NumPy or JAX array must have the page's dtype, compared without
JAX's canonicalisation (a float64 NumPy array is not a float32 page's data, even with JAX's
64-bit mode off). Python data (lists, nested lists, Python scalars) has no dtype of its own
and takes the page's, as long as every value fits. Traced values (inside ``jit``, ``vmap`` or
``grad``) are refused: the shell has side effects and needs concrete values.
"""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np

from .._checks import is_int
from .._compat import is_tracer
from .._errors import InvalidArgumentError, InvalidDeltaError, PageNotFoundError
from ..deltas._delta import DELTA_TYPES, AccumulateDelta, DenseDelta, SparseDelta
from ..semirings import Semiring

_TRACED = (
    "is traced (a JAX tracer inside jit, vmap or grad): the state's methods have side effects (epochs, "
    "the log) and need concrete values. Inside traced code use the pure core (apply_delta, route_pool, "
    "ring_append) and hand the results to the state outside the trace"
)


def refuse_tracers(what: str, value) -> None:
    """Raise InvalidArgumentError if any leaf of ``value`` is a JAX tracer."""
    if is_tracer(value) or any(is_tracer(leaf) for leaf in jax.tree_util.tree_leaves(value)):
        raise InvalidArgumentError(f"{what} {_TRACED}")


def page_id(value) -> int:
    """A page id from an int, a :class:`Page` (anything with an int ``.id``) or a 0-d integer array."""
    if is_int(value):
        return int(value)
    pid = getattr(value, "id", None)
    if is_int(pid) and type(value).__name__ == "Page":
        return int(pid)
    if is_tracer(value):
        raise InvalidArgumentError(f"page_id {_TRACED}")
    if isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0 and np.dtype(value.dtype).kind in "iu":
        return int(value)  # a 0-d integer array, e.g. jnp.asarray(ids)[0]
    raise PageNotFoundError(value, f"page_id={value!r} is not a page id (expected an int or a Page)")


def cast_untyped(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """Python data (already ``np.asarray``-ed) in ``dtype``, as ``jnp.asarray(data, dtype)``
    would, refusing values that would change more than a float rounds: wrap-around,
    truncation of a fraction, or a finite value that overflows to infinity."""
    if arr.dtype == object:  # e.g. an int past 64 bits: name it (the dtype check would say "object")
        big = next((v for v in arr.reshape(-1).tolist() if type(v) is int and not -(2**63) <= v < 2**64), None)
        if big is not None:
            raise InvalidDeltaError(f"{what} holds {big!r}, which dtype {dtype} cannot represent")
    if arr.dtype.kind not in "biuf" or arr.dtype == dtype:
        return arr  # a dtype check reports what is left
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cast = arr.astype(dtype)
        if dtype.kind == "f" or dtype.name == "bfloat16":
            ok = np.isfinite(cast) | ~np.isfinite(arr)
        else:
            ok = cast.astype(arr.dtype) == arr
    if not ok.all():
        bad = arr.reshape(-1)[np.flatnonzero(~ok.reshape(-1))[0]].item()
        raise InvalidDeltaError(f"{what} holds {bad!r}, which dtype {dtype} cannot represent")
    return cast


def values(data, dtype: np.dtype, what: str):
    """``data`` as an array of exactly ``dtype``: arrays (and NumPy scalars) must already have
    it; Python data takes it when every value fits."""
    if is_tracer(data):
        raise InvalidArgumentError(f"{what} {_TRACED}")
    if isinstance(data, (jax.Array, np.ndarray, np.generic)):
        arr = data
    else:
        try:
            arr = np.asarray(data)
        except Exception as e:  # noqa: BLE001 - report any conversion failure the same way
            raise InvalidDeltaError(f"{what} cannot be read as an array: {e}") from None
        arr = cast_untyped(arr, dtype, what)
    if np.dtype(arr.dtype) != dtype:
        raise InvalidDeltaError(f"{what} has dtype {np.dtype(arr.dtype)}; expected dtype {dtype} (arrays are never cast)")
    return arr


def page_data(data, pool, pid: int):
    """The whole new content of page ``pid`` of ``pool``: its exact shape and dtype."""
    arr = values(data, pool.dtype, f"data for page {pid}")
    if tuple(np.shape(arr)) != pool.shape:
        raise InvalidDeltaError(
            f"data for page {pid} has shape {tuple(np.shape(arr))} ({np.size(arr)} elements); "
            f"expected shape {pool.shape}"
        )
    return arr


def _int_array(x, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as e:  # noqa: BLE001
        raise InvalidDeltaError(f"{what} cannot be read as an array: {e}") from None
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidDeltaError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr


def delta(d, pool, pid: int, where: str = ""):
    """Delta ``d`` checked against page ``pid`` of ``pool`` and rebuilt from checked leaves:
    exact dtypes, the page's shape, int32 indices inside the page, a semiring that acts on it."""
    at = f" ({where})" if where else ""
    if not isinstance(d, DELTA_TYPES):
        raise InvalidDeltaError(f"expected a Delta (dense, sparse or accumulate){at}, got {type(d).__name__}")
    refuse_tracers(f"the delta{at}", d)
    shape, dtype = pool.shape, pool.dtype
    if isinstance(d, DenseDelta):
        mask = d.mask if isinstance(d.mask, (jax.Array, np.ndarray)) else np.asarray(d.mask)
        if np.dtype(mask.dtype) != np.bool_ or tuple(np.shape(mask)) != shape:
            raise InvalidDeltaError(
                f"dense delta mask must be bool of shape {shape}, got {np.dtype(mask.dtype)}{tuple(np.shape(mask))}{at}"
            )
        payload = values(d.payload, dtype, f"dense delta payload{at}")
        if tuple(np.shape(payload)) != shape:
            raise InvalidDeltaError(f"delta shape {tuple(np.shape(payload))} does not fit a page of shape {shape}{at}")
        return DenseDelta(mask, payload)
    if isinstance(d, SparseDelta):
        if tuple(d.shape) != shape:
            raise InvalidDeltaError(f"delta shape {tuple(d.shape)} does not fit a page of shape {shape}{at}")
        idx = _int_array(d.indices, f"sparse delta indices{at}")
        if idx.ndim != 1:
            raise InvalidDeltaError(f"sparse delta indices must be 1-D, got shape {idx.shape}{at}")
        vals = values(d.values, dtype, f"sparse delta values{at}")
        if tuple(np.shape(vals)) != idx.shape:
            raise InvalidDeltaError(f"sparse delta needs one value per index, got indices{idx.shape} and values{tuple(np.shape(vals))}{at}")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= pool.page_elems):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise InvalidDeltaError(f"{where + ', ' if where else ''}sparse index {bad} is out of range for page {pid} of {pool.page_elems} elements")
        return SparseDelta(idx.astype(np.int32), vals, shape)
    if not isinstance(d.semiring, Semiring):
        raise InvalidDeltaError(f"accumulate delta semiring={d.semiring!r} is not a Semiring record{at}")
    if not d.semiring.accepts(dtype):
        raise InvalidDeltaError(
            f"accumulate delta under semiring {d.semiring.name!r} (payload dtype {np.dtype(np.result_type(d.payload))}) "
            f"cannot act on a {dtype} page{at}"
        )
    payload = values(d.payload, dtype, f"accumulate delta payload{at}")
    if tuple(np.shape(payload)) != shape:
        raise InvalidDeltaError(f"delta shape {tuple(np.shape(payload))} does not fit a page of shape {shape}{at}")
    return AccumulateDelta(payload, d.semiring)


def path(value, what: str = "path") -> str:
    """An absolute filesystem path from a ``str``, ``bytes`` or ``os.PathLike``."""
    try:
        p = os.fsdecode(os.fspath(value))
    except TypeError:
        raise InvalidArgumentError(f"{what}={value!r} is not a path (expected a str or os.PathLike)") from None
    if not p:
        raise InvalidArgumentError(f"{what}={value!r} is empty")
    return os.path.abspath(p)
