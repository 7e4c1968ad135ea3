"""Fused gather -> merge -> scatter of delta rows into pool slots, in one pass and in place.

A pool is one arena array ``(num_slots, *page_shape)``; row ``i`` of a batch of deltas targets
page slot ``slots[i]``. Three kinds of delta rows (the kinds of ``mmsb_jax``'s deltas):

* **dense** (``mask=`` given): ``page = where(mask[i], payload[i], page)``;
* **sparse** (``indices=`` given): ``page.flat[indices[i, j]] = payload[i, j]`` for each ``j``
  (a repeated index within the batch: the last entry wins; indices outside the page are
  ignored, so ``-1`` pads a row);
* **accumulate** (``semiring=`` given): ``page = page ⊕ payload[i]``;
* neither: a whole-page overwrite ``page = payload[i]``.

Rows are applied **in order**; rows whose slot is outside ``[0, num_slots)`` (``-1``:
padding) are skipped. XLA does ``gather -> where -> scatter`` as three passes over the touched
pages; the kernel reads each touched page block once, merges every row aimed at it in
registers and writes it back once, into the pool buffer itself (``input_output_aliases``:
donate the pool in the caller's ``jit`` and nothing else is copied).

Duplicate slots. With ``unique_slots=True`` the caller promises each slot appears at most once
(the shell merges deltas per page first): one program owns each (slot, lane block) and no
ordering is needed. The promise is checked when ``slots`` is a concrete array (not under a
trace); a violated promise under ``jit`` gives an unspecified result. With
``unique_slots=False`` (the default) rows are grouped by slot with a stable sort and each
group is applied in row order inside one program (dense, accumulate); sparse entries are
resolved to their last writer first. Either way the result is deterministic and equals
:func:`scatter_merge_reference`.

Layout: the page is flattened to ``W`` lanes; a program handles ``block_rows`` rows (or slot
groups) x ``block_lanes`` lanes (both powers of two; blocks of 8-16 x 1024 suit Hopper), and
lanes past ``W`` are masked, so any page width works. Gradients (``jax.grad`` w.r.t.
``pool`` and ``payload``) go through a ``custom_vjp`` whose backward differentiates the
reference.

Example:
  >>> import jax.numpy as jnp
  >>> from pallas_kernels.scatter_merge import scatter_merge
  >>> pool = jnp.zeros((4, 3), jnp.float32)
  >>> out = scatter_merge(pool, jnp.array([2, 0]), jnp.ones((2, 3), jnp.float32),
  ...                     mask=jnp.array([[True, False, True]] * 2), interpret=True)
  >>> out.tolist()
  [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from mmsb_jax._errors import InvalidArgumentError
from mmsb_jax.semirings import Semiring

from . import _pallas

Array = Any

__all__ = [
    "delta_kind",
    "scatter_merge",
    "scatter_merge_reference",
    "scatter_merge_xla",
]


# --------------------------------------------------------------------------- checks
def delta_kind(mask=None, indices=None, semiring=None) -> str:
    """``"dense"``, ``"sparse"``, ``"accumulate"`` or ``"overwrite"`` from the given arguments."""
    given = [n for n, v in (("mask", mask), ("indices", indices), ("semiring", semiring)) if v is not None]
    if len(given) > 1:
        raise InvalidArgumentError(f"scatter_merge takes at most one of mask=, indices=, semiring=; got {given}")
    if semiring is not None and not isinstance(semiring, Semiring):
        raise InvalidArgumentError(f"semiring must be a mmsb_jax.semirings.Semiring record, got {semiring!r}")
    return {"mask": "dense", "indices": "sparse", "semiring": "accumulate"}.get(given[0] if given else "", "overwrite")


def _coerce(pool, slots, payload, mask, indices):
    """The arguments as arrays (``mask``/``indices`` may stay ``None``)."""
    as_opt = lambda x: None if x is None else jnp.asarray(x)  # noqa: E731
    return jnp.asarray(pool), jnp.asarray(slots), jnp.asarray(payload), as_opt(mask), as_opt(indices)


def _check(pool, slots, payload, mask, indices, semiring) -> str:
    kind = delta_kind(mask, indices, semiring)
    if pool.ndim < 1:
        raise InvalidArgumentError(f"pool must be (num_slots, *page_shape), got pool.shape={pool.shape}")
    if slots.ndim != 1 or not jnp.issubdtype(slots.dtype, jnp.integer):
        raise InvalidArgumentError(f"slots must be a 1-D integer array, got slots.shape={slots.shape}, slots.dtype={slots.dtype}")
    n = slots.shape[0]
    if payload.dtype != pool.dtype:
        raise InvalidArgumentError(f"payload.dtype={payload.dtype} must equal pool.dtype={pool.dtype}")
    page = pool.shape[1:]
    if kind == "sparse":
        if indices.ndim != 2 or indices.shape[0] != n or not jnp.issubdtype(indices.dtype, jnp.integer):
            raise InvalidArgumentError(f"indices must be integer (len(slots), k)=({n}, k), got indices.shape={indices.shape}, "
                             f"indices.dtype={indices.dtype}")
        if payload.shape != indices.shape:
            raise InvalidArgumentError(f"sparse payload (values) must have indices' shape {indices.shape}, got payload.shape={payload.shape}")
        return kind
    if payload.shape != (n,) + page:
        raise InvalidArgumentError(f"payload must be (len(slots), *page_shape)={(n,) + page}, got payload.shape={payload.shape}")
    if kind == "dense" and (mask.shape != payload.shape or mask.dtype != jnp.bool_):
        raise InvalidArgumentError(f"mask must be bool with payload's shape {payload.shape}, got mask.shape={mask.shape}, "
                         f"mask.dtype={mask.dtype}")
    if kind == "accumulate" and not semiring.accepts(pool.dtype):
        raise InvalidArgumentError(f"semiring {semiring.name!r} works on {semiring.dtype_kind} pages, got pool.dtype={pool.dtype}")
    return kind


def _check_unique(slots, num_slots: int) -> None:
    """Raise if a concrete ``slots`` repeats a valid slot (skipped under a trace)."""
    s = _pallas.concrete_numpy(slots)
    if s is None:
        return
    s = s[(s >= 0) & (s < num_slots)]
    vals, counts = np.unique(s, return_counts=True)
    if (counts > 1).any():
        raise InvalidArgumentError(
            f"unique_slots=True but slots repeat: slot(s) {vals[counts > 1][:8].tolist()} appear more than once; "
            "merge the deltas per page first or pass unique_slots=False"
        )


def _flat(pool):
    return pool.reshape(pool.shape[0], int(np.prod(pool.shape[1:], dtype=np.int64)))


# --------------------------------------------------------------------------- reference
def _row_keep_last(idx, ok):
    """``keep[j]``: entry ``j`` is valid and no later valid entry of the row has its index."""
    k = idx.shape[-1]
    pos = jnp.arange(k)
    later = (pos[:, None] < pos[None, :]).reshape((1,) * (idx.ndim - 1) + (k, k))
    shadow = (idx[..., :, None] == idx[..., None, :]) & later & ok[..., None, :]
    return ok & ~jnp.any(shadow, axis=-1)


def scatter_merge_reference(pool, slots, payload, *, mask=None, indices=None, semiring=None):
    """The specification: apply delta rows one by one, in order (``lax.scan``).

    Args:
      pool: ``(num_slots, *page_shape)``.
      slots: ``(n,)`` integer; out-of-range slots are skipped.
      payload: ``(n, *page_shape)`` (dense, accumulate, overwrite) or ``(n, k)`` values (sparse),
        of ``pool.dtype``.
      mask: ``(n, *page_shape)`` bool (dense), or ``None``.
      indices: ``(n, k)`` integer flat indices into the page (sparse), or ``None``.
      semiring: a ``Semiring`` (accumulate: ``page ⊕ payload``), or ``None``.

    Returns:
      The new pool.
    """
    pool, slots, payload, mask, indices = _coerce(pool, slots, payload, mask, indices)
    kind = _check(pool, slots, payload, mask, indices, semiring)
    num_slots = pool.shape[0]
    flat = _flat(pool)
    width = flat.shape[1]
    n = slots.shape[0]
    rows = payload if kind == "sparse" else payload.reshape(n, width)
    extra = {"dense": None if mask is None else mask.reshape(n, width), "sparse": indices}.get(kind)
    if extra is None:
        extra = jnp.zeros((n, 0), jnp.bool_)

    def step(p, xs):
        slot, row, ex = xs
        valid = (slot >= 0) & (slot < num_slots)
        s = jnp.clip(slot, 0, num_slots - 1)
        page = p[s]
        if kind == "dense":
            new = jnp.where(ex, row, page)
        elif kind == "accumulate":
            new = semiring.add(page, row).astype(page.dtype)
        elif kind == "overwrite":
            new = row
        else:
            ok = (ex >= 0) & (ex < width)
            keep = _row_keep_last(ex, ok)
            new = page.at[jnp.where(keep, ex, width)].set(row, mode="drop")
        return p.at[s].set(jnp.where(valid, new, page)), None

    out, _ = lax.scan(step, flat, (slots, rows, extra))
    return out.reshape(pool.shape)


# --------------------------------------------------------------------------- XLA path
def _global_last_writer(slots, indices, num_slots: int, width: int):
    """Indices with every entry but the batch's last writer of each (slot, index) set to -1."""
    n, k = indices.shape
    ok = ((slots >= 0) & (slots < num_slots))[:, None] & (indices >= 0) & (indices < width)
    skey = jnp.where(ok, slots[:, None], num_slots).astype(jnp.int32).reshape(-1)
    ikey = jnp.where(ok, indices, 0).astype(jnp.int32).reshape(-1)
    pos = jnp.arange(n * k, dtype=jnp.int32)
    s, i, p = lax.sort((skey, ikey, pos), num_keys=2, is_stable=True)
    last = jnp.concatenate([(s[1:] != s[:-1]) | (i[1:] != i[:-1]), jnp.ones((1,), jnp.bool_)])
    keep = jnp.zeros((n * k,), jnp.bool_).at[p].set(last, unique_indices=True).reshape(n, k) & ok
    return jnp.where(keep, indices, -1)


def scatter_merge_xla(pool, slots, payload, *, mask=None, indices=None, semiring=None, unique_slots=False):
    """The XLA path (no Pallas): gather / merge / scatter, same result as :func:`scatter_merge`.

    Arguments as :func:`scatter_merge`. With ``unique_slots=True`` it is three vectorized
    passes; with ``unique_slots=False`` sparse entries are resolved to their last writer by a
    stable sort, and dense / accumulate rows fall back to the in-order reference (a
    ``lax.scan`` over the rows: correct, but slow for large batches — merge per page first).
    """
    pool, slots, payload, mask, indices = _coerce(pool, slots, payload, mask, indices)
    kind = _check(pool, slots, payload, mask, indices, semiring)
    if unique_slots:
        _check_unique(slots, pool.shape[0])
    return _xla_jit(pool, slots, payload, mask, indices, kind=kind, semiring=semiring, unique_slots=bool(unique_slots))


@functools.partial(jax.jit, static_argnames=("kind", "semiring", "unique_slots"))
def _xla_jit(pool, slots, payload, mask, indices, *, kind, semiring, unique_slots):
    num_slots = pool.shape[0]
    flat = _flat(pool)
    width = flat.shape[1]
    valid = (slots >= 0) & (slots < num_slots)
    target = jnp.where(valid, slots, num_slots)
    if kind == "sparse":
        if unique_slots and _pallas.next_pow2(indices.shape[1]) <= _DEDUPE_MAX_K:
            ok = valid[:, None] & (indices >= 0) & (indices < width)
            keep = _row_keep_last(indices, ok)
        else:
            indices = _global_last_writer(slots, indices, num_slots, width)
            keep = indices >= 0
        rows = jnp.where(keep, target[:, None], num_slots)
        cols = jnp.where(keep, indices, width)
        out = flat.at[rows, cols].set(payload, mode="drop", unique_indices=True)
        return out.reshape(pool.shape)
    if not unique_slots:
        return scatter_merge_reference(pool, slots, payload, mask=mask, indices=indices, semiring=semiring)
    n = slots.shape[0]
    cur = flat.at[jnp.where(valid, slots, 0)].get()
    rows = payload.reshape(n, width)
    if kind == "dense":
        new = jnp.where(mask.reshape(n, width), rows, cur)
    elif kind == "accumulate":
        new = semiring.add(cur, rows).astype(flat.dtype)
    else:
        new = rows
    return flat.at[target].set(new, mode="drop", unique_indices=True).reshape(pool.shape)


# --------------------------------------------------------------------------- kernels
def _tile_kernel(*refs, kind, semiring, grouped, n_rows, num_slots, width, br, bl, interpret):
    """Dense / accumulate / overwrite: one (rows-or-groups x lanes) tile, read once, written once."""
    if grouped:
        slot_ref, start_ref, count_ref, perm_ref, *refs = refs
    else:
        slot_ref, *refs = refs
    if kind == "dense":
        payload_ref, mask_ref, pool_in, pool_out = refs
    else:
        (payload_ref, pool_in, pool_out), mask_ref = refs, None
    dt = pool_out.dtype
    zero = jnp.zeros((), dt)
    rows = pl.program_id(0) * br + jnp.arange(br, dtype=jnp.int32)
    lanes = pl.program_id(1) * bl + jnp.arange(bl, dtype=jnp.int32)
    rin = rows < n_rows
    lin = lanes < width
    # masked lanes touch no memory on GPU, so indices stay raw there (keeps Triton's
    # contiguity analysis, hence vector loads)
    slot = _pallas.load(slot_ref.at[rows], mask=rin, other=-1)
    valid = rin & (slot >= 0) & (slot < num_slots)
    if grouped:
        count = jnp.where(valid, _pallas.load(count_ref.at[rows], mask=rin, other=0), 0)
        start = _pallas.load(start_ref.at[rows], mask=rin, other=0)
    tile_ok = valid[:, None] & lin[None, :]
    at_pool = (slot[:, None], lanes[None, :])
    tile = _pallas.load(pool_in.at[at_pool], mask=tile_ok, other=zero)

    def apply(r, tile):
        if grouped:
            act = valid & (r < count)
            prow = _pallas.load(perm_ref.at[start + r], mask=act, other=0)
        else:
            act, prow = valid, rows
        ok = act[:, None] & lin[None, :]
        at = (prow[:, None], lanes[None, :])
        p = _pallas.load(payload_ref.at[at], mask=ok, other=zero)
        if kind == "dense":
            m = _pallas.load(mask_ref.at[at], mask=ok, other=False)
            return jnp.where(ok & m, p, tile)
        if kind == "accumulate":
            return jnp.where(ok, semiring.add(tile, p).astype(dt), tile)
        return jnp.where(ok, p, tile)

    if grouped:
        tile = lax.fori_loop(0, jnp.max(count), apply, tile)
    else:
        tile = apply(0, tile)
    _pallas.store(pool_out.at[_pallas.store_index(interpret, tile_ok, at_pool, (num_slots, width))], tile, mask=tile_ok)


def _sparse_kernel(slot_ref, idx_ref, val_ref, _pool_in, pool_out, *, n_rows, k, num_slots, width, br, bk, dedupe,
                   interpret):
    """Sparse: scatter a (rows x k-block) block of values; with ``dedupe`` (the block holds whole
    rows) a row's repeated index keeps only its last entry."""
    rows = pl.program_id(0) * br + jnp.arange(br, dtype=jnp.int32)
    cols = pl.program_id(1) * bk + jnp.arange(bk, dtype=jnp.int32)
    rin = rows < n_rows
    cin = cols < k
    slot = _pallas.load(slot_ref.at[rows], mask=rin, other=-1)
    valid = rin & (slot >= 0) & (slot < num_slots)
    m2 = rin[:, None] & cin[None, :]
    at = (rows[:, None], cols[None, :])
    idx = _pallas.load(idx_ref.at[at], mask=m2, other=-1)
    val = _pallas.load(val_ref.at[at], mask=m2, other=jnp.zeros((), val_ref.dtype))
    keep = valid[:, None] & m2 & (idx >= 0) & (idx < width)
    if dedupe:
        same = idx[:, :, None] == idx[:, None, :]
        later = (cols[:, None] < cols[None, :])[None, :, :]
        shadowed = jnp.max((same & later & keep[:, None, :]).astype(jnp.int32), axis=2) > 0
        keep = keep & ~shadowed
    target = (jnp.broadcast_to(slot[:, None], idx.shape), idx)
    _pallas.store(pool_out.at[_pallas.store_index(interpret, keep, target, (num_slots, width))], val.astype(pool_out.dtype),
            mask=keep)


def _groups(slots, num_slots: int):
    """Slot groups of a batch: stable order, first position and size of each group."""
    n = slots.shape[0]
    key = jnp.where((slots >= 0) & (slots < num_slots), slots, num_slots).astype(jnp.int32)
    perm = jnp.argsort(key, stable=True).astype(jnp.int32)
    sk = key[perm]
    is_start = jnp.concatenate([jnp.ones((1,), jnp.bool_), sk[1:] != sk[:-1]]) & (sk < num_slots)
    start = jnp.nonzero(is_start, size=n, fill_value=n)[0].astype(jnp.int32)
    nvalid = jnp.sum(sk < num_slots).astype(jnp.int32)
    nxt = jnp.concatenate([start[1:], jnp.full((1,), n, jnp.int32)])
    count = jnp.where(start < n, jnp.minimum(nxt, nvalid) - start, 0).astype(jnp.int32)
    gslot = jnp.where(start < n, sk[jnp.clip(start, 0, n - 1)], -1).astype(jnp.int32)
    return gslot, start, count, perm


class _Cfg(NamedTuple):
    kind: str
    semiring: Any
    unique_slots: bool
    block_rows: int | None
    block_lanes: int | None
    num_warps: int | None
    interpret: bool


# In-kernel last-writer resolution compares a row's entries pairwise: (rows, k, k) per block.
_DEDUPE_MAX_K = 64
_SPARSE_TILE = 4096
_DENSE_TILE = 8192
_MAX_ROWS = 16  # Hopper: 8-16 rows x 1024 lanes measured well; 32+ rows collapsed


def _blocks(cfg: _Cfg, width: int, n: int):
    bl = cfg.block_lanes or min(1024, _pallas.next_pow2(width))
    br = cfg.block_rows or max(1, min(_MAX_ROWS, _DENSE_TILE // bl, _pallas.next_pow2(n)))
    return _pallas.check_pow2("block_rows", br), _pallas.check_pow2("block_lanes", bl)


def _sparse_blocks(cfg: _Cfg, k: int, n: int):
    kp = _pallas.next_pow2(k)
    dedupe = cfg.unique_slots and kp <= _DEDUPE_MAX_K  # else resolved by a sort before the kernel
    bk = kp if dedupe else min(kp, cfg.block_lanes or 1024)
    per_row = kp * kp if dedupe else bk
    br = cfg.block_rows or max(1, min(64, _SPARSE_TILE // per_row, _pallas.next_pow2(n)))
    return _pallas.check_pow2("block_rows", br), _pallas.check_pow2("block_lanes", bk), dedupe


def _run_kernel(cfg: _Cfg, pool, slots, payload, mask, indices):
    num_slots = pool.shape[0]
    flat = _flat(pool)
    width = flat.shape[1]
    n = slots.shape[0]
    if n == 0 or width == 0 or num_slots == 0:
        return pool
    slots = slots.astype(jnp.int32)
    out_shape = jax.ShapeDtypeStruct(flat.shape, flat.dtype)
    if cfg.kind == "sparse":
        k = indices.shape[1]
        if k == 0:
            return pool
        indices = indices.astype(jnp.int32)
        br, bk, dedupe = _sparse_blocks(cfg, k, n)
        if not dedupe:  # duplicates across rows (or long rows): resolve every entry to its last writer
            indices = _global_last_writer(slots, indices, num_slots, width)
        kernel = functools.partial(_sparse_kernel, n_rows=n, k=k, num_slots=num_slots, width=width, br=br, bk=bk,
                                   dedupe=dedupe, interpret=cfg.interpret)
        out = _pallas.pallas_call(kernel, out_shape=out_shape, grid=(pl.cdiv(n, br), pl.cdiv(k, bk)),
                            interpret=cfg.interpret, name="scatter_merge_sparse", num_warps=cfg.num_warps,
                            input_output_aliases={3: 0})(slots, indices, payload, flat)
        return out.reshape(pool.shape)
    br, bl = _blocks(cfg, width, n)
    rows = payload.reshape(n, width)
    extra = [mask.reshape(n, width)] if cfg.kind == "dense" else []
    lead = [slots] if cfg.unique_slots else list(_groups(slots, num_slots))
    args = lead + [rows] + extra + [flat]
    kernel = functools.partial(_tile_kernel, kind=cfg.kind, semiring=cfg.semiring, grouped=not cfg.unique_slots,
                               n_rows=n, num_slots=num_slots, width=width, br=br, bl=bl, interpret=cfg.interpret)
    out = _pallas.pallas_call(kernel, out_shape=out_shape, grid=(pl.cdiv(n, br), pl.cdiv(width, bl)),
                        interpret=cfg.interpret, name=f"scatter_merge_{cfg.kind}",
                        num_warps=cfg.num_warps, input_output_aliases={len(args) - 1: 0})(*args)
    return out.reshape(pool.shape)


# --------------------------------------------------------------------------- custom_vjp + wrapper
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _merge(cfg, pool, slots, payload, mask, indices):
    return _run_kernel(cfg, pool, slots, payload, mask, indices)


def _merge_fwd(cfg, pool, slots, payload, mask, indices):
    return _run_kernel(cfg, pool, slots, payload, mask, indices), (pool, slots, payload, mask, indices)


def _merge_bwd(cfg, res, g):
    pool, slots, payload, mask, indices = res

    def ref(p, v):
        return scatter_merge_reference(p, slots, v, mask=mask, indices=indices, semiring=cfg.semiring)

    _, vjp = jax.vjp(ref, pool, payload)
    gp, gv = vjp(g)
    return gp, None, gv, None, None


_merge.defvjp(_merge_fwd, _merge_bwd)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _merge_jit(pool, slots, payload, mask, indices, *, cfg):
    return _merge(cfg, pool, slots, payload, mask, indices)


def scatter_merge(pool, slots, payload, *, mask=None, indices=None, semiring=None, unique_slots=False,
                  block_rows=None, block_lanes=None, num_warps=None, interpret=False):
    """Merge a batch of delta rows into pool slots with the Pallas kernel (one fused pass).

    Same arguments and result as :func:`scatter_merge_reference` (see the module docstring for
    the delta kinds), plus:

    Args:
      unique_slots: the caller promises no valid slot repeats (checked on concrete ``slots``);
        skips the grouping sort. Default ``False``: duplicates are applied in row order.
      block_rows, block_lanes: static tile (powers of two); default: lanes =
        ``min(1024, next_pow2(W))``, rows so a tile holds about 8192 elements (sparse: rows x
        ``next_pow2(k)`` about 2048).
      num_warps: Triton warps per program (GPU only; ``None``: Triton's default of 4).
      interpret: run the kernel in the Pallas interpreter (CPU tests).

    Returns:
      The new pool (in place when the caller's ``jit`` donates ``pool``).

    Raises:
      InvalidArgumentError (an MMSBError and a ValueError): shapes/dtypes do not fit, conflicting delta kinds, a block size that is not a
        power of two, or ``unique_slots=True`` with repeated concrete slots.
    """
    pool, slots, payload, mask, indices = _coerce(pool, slots, payload, mask, indices)
    kind = _check(pool, slots, payload, mask, indices, semiring)
    if unique_slots:
        _check_unique(slots, pool.shape[0])
    for name, b in (("block_rows", block_rows), ("block_lanes", block_lanes)):
        if b is not None:
            _pallas.check_pow2(name, b)
    cfg = _Cfg(kind, semiring, bool(unique_slots), block_rows, block_lanes, num_warps, bool(interpret))
    return _merge_jit(pool, slots, payload, mask, indices, cfg=cfg)
