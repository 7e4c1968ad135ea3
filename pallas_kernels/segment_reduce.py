"""Segmented semiring reduction, plain and fused with propagation's gather and ⊗.

``segment_reduce(data, ids, N, sr)[v] = ⨁_{i: ids[i] == v} data[i]`` equals
``sr.segment_reduce`` for every semiring record (empty segments hold ``sr.zero``, never NaN).
``gather_segment_reduce(x, src, w, ids, N, sr)[v] = ⨁_{e: ids[e] == v} w[e] ⊗ x[src[e]]`` is
one level of propagation (``x = b ⊕ Aᵀ ⊗ x``): XLA gathers ``x[src]`` into an ``(E, F)``
temporary, multiplies, then segment-reduces it; the kernel does gather, ⊗ and ⊕ in
registers and writes each destination once.

Layout: the kernels want **CSR by destination** — edges sorted by segment id and
``offsets`` (``(N + 1,)``, segment ``v`` owns edges ``offsets[v]:offsets[v + 1]``). A compiled
graph keeps that layout, so the hot path is :func:`segment_reduce_csr` /
:func:`gather_segment_reduce_csr`; :func:`csr_from_segment_ids` converts (a stable sort,
skipped when the ids are already sorted) and :func:`segment_reduce` /
:func:`gather_segment_reduce` take plain segment ids like ``jax.ops.segment_*``.

A program owns ``block_segments`` destinations x ``block_features`` features and walks their
edge lists side by side (``max in-degree of the block`` steps, masked per segment); the ⊕
order within a segment is the edge order, so results are deterministic (no atomics; REAL
and LOG equal XLA's up to rounding). Features are the flattened trailing dimensions; weights
are ``(E,)`` (broadcast over features) or ``(E, *features)``. Gradients go through a
``custom_vjp`` whose backward differentiates the reference.

Example:
  >>> import jax.numpy as jnp
  >>> from mmsb_jax import semirings
  >>> from pallas_kernels.segment_reduce import segment_reduce
  >>> segment_reduce(jnp.array([3.0, 1.0, 2.0]), jnp.array([0, 0, 2]), 4, semirings.TROPICAL,
  ...                interpret=True).tolist()
  [1.0, inf, 2.0, inf]
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mmsb_jax._errors import InvalidArgumentError
from mmsb_jax.semirings import Semiring

from . import _pallas

Array = Any

__all__ = [
    "csr_from_segment_ids",
    "gather_segment_reduce",
    "gather_segment_reduce_csr",
    "gather_segment_reduce_csr_reference",
    "gather_segment_reduce_reference",
    "segment_ids_from_csr",
    "segment_reduce",
    "segment_reduce_csr",
    "segment_reduce_csr_reference",
    "segment_reduce_reference",
]


# --------------------------------------------------------------------------- layout
def csr_from_segment_ids(segment_ids, num_segments: int, *, indices_are_sorted: bool = False):
    """``(order, offsets)``: ``order`` sorts the entries by segment (stable), and
    ``offsets[v]:offsets[v + 1]`` are segment ``v``'s positions in that order.

    Ids outside ``[0, num_segments)`` fall outside every segment (dropped, like
    ``jax.ops.segment_*``). With ``indices_are_sorted=True`` (ids ascending) ``order`` is the
    identity and no sort runs.

    Example:
      >>> import jax.numpy as jnp
      >>> order, offsets = csr_from_segment_ids(jnp.array([2, 0, 2]), 3)
      >>> order.tolist(), offsets.tolist()
      ([1, 0, 2], [0, 1, 1, 3])
    """
    ids = jnp.asarray(segment_ids)
    if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise InvalidArgumentError(f"segment_ids must be a 1-D integer array, got shape={ids.shape}, dtype={ids.dtype}")
    num_segments = int(num_segments)
    if num_segments < 0:
        raise InvalidArgumentError(f"num_segments must be >= 0, got num_segments={num_segments}")
    ids = ids.astype(jnp.int32)
    bounds = jnp.arange(num_segments + 1, dtype=jnp.int32)
    if indices_are_sorted:
        order = jnp.arange(ids.shape[0], dtype=jnp.int32)
        return order, jnp.searchsorted(ids, bounds, side="left").astype(jnp.int32)
    key = jnp.where((ids >= 0) & (ids < num_segments), ids, num_segments)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    return order, jnp.searchsorted(key[order], bounds, side="left").astype(jnp.int32)


def segment_ids_from_csr(offsets, num_entries: int):
    """The segment id of each of ``num_entries`` CSR-ordered entries (``N`` = none: dropped)."""
    offsets = jnp.asarray(offsets).astype(jnp.int32)
    n = offsets.shape[0] - 1
    e = jnp.arange(num_entries, dtype=jnp.int32)
    seg = jnp.searchsorted(offsets[1:], e, side="right").astype(jnp.int32)
    inside = (e >= offsets[0]) & (e < offsets[n])
    return jnp.where(inside, seg, n)


# --------------------------------------------------------------------------- checks
def _check_semiring(semiring, dtype, what: str):
    if not isinstance(semiring, Semiring):
        raise InvalidArgumentError(f"semiring must be a mmsb_jax.semirings.Semiring record, got {semiring!r}")
    if not semiring.accepts(dtype):
        raise InvalidArgumentError(f"semiring {semiring.name!r} works on {semiring.dtype_kind} arrays, got {what}.dtype={dtype}")


def _check_weights(weights, num_edges: int, feat: tuple, dtype):
    if weights is None:
        return
    if weights.dtype != dtype:
        raise InvalidArgumentError(f"weights.dtype={weights.dtype} must equal the data dtype {dtype}")
    if weights.shape not in ((num_edges,), (num_edges,) + feat):
        raise InvalidArgumentError(f"weights must be (E,)={(num_edges,)} or (E, *features)={(num_edges,) + feat}, "
                         f"got weights.shape={weights.shape}")


def _check_int(name, a, ndim=1):
    if a.ndim != ndim or not jnp.issubdtype(a.dtype, jnp.integer):
        raise InvalidArgumentError(f"{name} must be a {ndim}-D integer array, got {name}.shape={a.shape}, {name}.dtype={a.dtype}")


def _bcast_w(w, ndim: int):
    return w.reshape(w.shape + (1,) * (ndim - w.ndim))


# --------------------------------------------------------------------------- references
def segment_reduce_reference(data, segment_ids, num_segments: int, semiring: Semiring):
    """The specification: ``semiring.segment_reduce(data, segment_ids, num_segments)``."""
    return semiring.segment_reduce(jnp.asarray(data), jnp.asarray(segment_ids), int(num_segments))


def gather_segment_reduce_reference(x, src, weights, segment_ids, num_segments: int, semiring: Semiring):
    """``⨁_{e: ids[e] == v} weights[e] ⊗ x[src[e]]`` with jnp (``weights=None``: the ⊗ identity)."""
    x = jnp.asarray(x)
    v = x[jnp.asarray(src)]
    if weights is not None:
        v = semiring.mul(_bcast_w(jnp.asarray(weights), v.ndim), v).astype(x.dtype)
    return semiring.segment_reduce(v, jnp.asarray(segment_ids), int(num_segments))


def segment_reduce_csr_reference(data, offsets, semiring: Semiring):
    """:func:`segment_reduce_reference` of CSR-ordered ``data`` (``N = len(offsets) - 1``)."""
    data = jnp.asarray(data)
    n = jnp.shape(offsets)[0] - 1
    return semiring.segment_reduce(data, segment_ids_from_csr(offsets, data.shape[0]), n)


def gather_segment_reduce_csr_reference(x, src, weights, offsets, semiring: Semiring):
    """:func:`gather_segment_reduce_reference` with CSR-ordered ``src``/``weights``."""
    src = jnp.asarray(src)
    n = jnp.shape(offsets)[0] - 1
    ids = segment_ids_from_csr(offsets, src.shape[0])
    return gather_segment_reduce_reference(x, src, weights, ids, n, semiring)


# --------------------------------------------------------------------------- kernel
def _segment_kernel(*refs, semiring, gather, weights, w_full, num_segments, num_rows, feat, bs, bf, interpret):
    """One (segments x features) tile: walk the block's edge lists side by side, ⊕ in registers."""
    off_ref, *refs = refs
    src_ref = refs.pop(0) if gather else None
    data_ref = refs.pop(0)
    w_ref = refs.pop(0) if weights else None
    (out_ref,) = refs
    dt = out_ref.dtype
    zero = jnp.full((), semiring.zero_for(dt), dt)
    segs = pl.program_id(0) * bs + jnp.arange(bs, dtype=jnp.int32)
    feats = pl.program_id(1) * bf + jnp.arange(bf, dtype=jnp.int32)
    sin = segs < num_segments
    fin = feats < feat
    # masked lanes touch no memory on GPU: raw indices (see _pallas.store_index)
    start = _pallas.load(off_ref.at[segs], mask=sin, other=0)
    end = _pallas.load(off_ref.at[segs + 1], mask=sin, other=0)
    deg = jnp.where(sin, end - start, 0)

    def step(t, acc):
        act = t < deg
        e = start + t
        ok = act[:, None] & fin[None, :]
        if gather:  # src is promised in range; clamp so a bad index never reads out of bounds
            row = jnp.clip(_pallas.load(src_ref.at[e], mask=act, other=0), 0, num_rows - 1)
        else:
            row = e
        v = _pallas.load(data_ref.at[row[:, None], feats[None, :]], mask=ok, other=zero)
        if weights:
            if w_full:
                w = _pallas.load(w_ref.at[e[:, None], feats[None, :]], mask=ok, other=zero)
            else:
                w = _pallas.load(w_ref.at[e], mask=act, other=zero)[:, None]
            v = semiring.mul(w, v).astype(dt)
        return jnp.where(ok, semiring.add(acc, v).astype(dt), acc)

    acc = jnp.full((bs, bf), semiring.zero_for(dt), dt)
    acc = lax.fori_loop(0, jnp.max(deg), step, acc)
    ok = sin[:, None] & fin[None, :]
    at = _pallas.store_index(interpret, ok, (segs[:, None], feats[None, :]), (num_segments, feat))
    _pallas.store(out_ref.at[at], acc, mask=ok)


class _Cfg(NamedTuple):
    semiring: Any
    block_segments: int | None
    block_features: int | None
    num_warps: int | None
    interpret: bool


def _blocks(cfg: _Cfg, feat: int):
    bf = cfg.block_features or min(256, _pallas.next_pow2(feat))
    bs = cfg.block_segments or max(1, min(128, 2048 // bf))
    return _pallas.check_pow2("block_segments", bs), _pallas.check_pow2("block_features", bf)


def _run(cfg: _Cfg, x, src, weights, offsets):
    """Kernel launch: ``x`` ``(R, *f)`` rows (gathered through ``src`` when given)."""
    n = offsets.shape[0] - 1
    fshape = x.shape[1:]
    feat = 1
    for d in fshape:
        feat *= d
    num_edges = src.shape[0] if src is not None else x.shape[0]
    if n == 0 or feat == 0 or num_edges == 0 or x.shape[0] == 0:
        return jnp.full((n,) + fshape, cfg.semiring.zero_for(x.dtype), x.dtype)
    bs, bf = _blocks(cfg, feat)
    x2 = x.reshape(x.shape[0], feat)
    args = [offsets.astype(jnp.int32)]
    if src is not None:
        args.append(src.astype(jnp.int32))
    args.append(x2)
    w_full = False
    if weights is not None:
        w_full = weights.ndim > 1
        args.append(weights.reshape(num_edges, feat) if w_full else weights)
    kernel = functools.partial(
        _segment_kernel, semiring=cfg.semiring, gather=src is not None, weights=weights is not None,
        w_full=w_full, num_segments=n, num_rows=x.shape[0], feat=feat, bs=bs, bf=bf,
        interpret=cfg.interpret)
    out = _pallas.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((n, feat), x.dtype),
                        grid=(pl.cdiv(n, bs), pl.cdiv(feat, bf)),
                        interpret=cfg.interpret, name="gather_segment_reduce" if src is not None else "segment_reduce",
                        num_warps=cfg.num_warps)(*args)
    return out.reshape((n,) + fshape)


# custom_vjp: the forward is the kernel, the backward differentiates the reference.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _csr_op(cfg, x, src, weights, offsets):
    return _run(cfg, x, src, weights, offsets)


def _csr_fwd(cfg, x, src, weights, offsets):
    return _run(cfg, x, src, weights, offsets), (x, src, weights, offsets)


def _csr_bwd(cfg, res, g):
    x, src, weights, offsets = res
    if src is None:
        _, vjp = jax.vjp(lambda d: segment_reduce_csr_reference(d, offsets, cfg.semiring), x)
        return vjp(g)[0], None, None, None
    if weights is None:
        _, vjp = jax.vjp(lambda a: gather_segment_reduce_csr_reference(a, src, None, offsets, cfg.semiring), x)
        return vjp(g)[0], None, None, None
    _, vjp = jax.vjp(lambda a, w: gather_segment_reduce_csr_reference(a, src, w, offsets, cfg.semiring), x, weights)
    gx, gw = vjp(g)
    return gx, None, gw, None


_csr_op.defvjp(_csr_fwd, _csr_bwd)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _csr_jit(x, src, weights, offsets, *, cfg):
    return _csr_op(cfg, x, src, weights, offsets)


def _cfg(semiring, block_segments, block_features, num_warps, interpret):
    for name, b in (("block_segments", block_segments), ("block_features", block_features)):
        if b is not None:
            _pallas.check_pow2(name, b)
    return _Cfg(semiring, block_segments, block_features, num_warps, bool(interpret))


# --------------------------------------------------------------------------- public ops
def segment_reduce_csr(data, offsets, semiring: Semiring, *, block_segments=None, block_features=None,
                       num_warps=None, interpret=False):
    """⊕ of CSR-ordered ``data`` rows per segment, with the Pallas kernel.

    Args:
      data: ``(E, *features)``, rows sorted by segment.
      offsets: ``(N + 1,)`` int, nondecreasing: segment ``v`` is ``data[offsets[v]:offsets[v+1]]``.
      semiring: a ``Semiring`` record (static).
      block_segments, block_features: static tile (powers of two); default ``128 x 1`` for
        scalars, ``8 x 256`` for 1 KiB float pages (about 2048 elements a tile).
      num_warps: Triton warps per program (GPU only).
      interpret: run in the Pallas interpreter (CPU tests).

    Returns:
      ``(N, *features)``; empty segments hold ``semiring.zero``.
    """
    data, offsets = jnp.asarray(data), jnp.asarray(offsets)
    _check_semiring(semiring, data.dtype, "data")
    _check_int("offsets", offsets)
    if data.ndim < 1 or offsets.shape[0] < 1:
        raise InvalidArgumentError(f"need data (E, *features) and offsets (N + 1,), got {data.shape=}, {offsets.shape=}")
    cfg = _cfg(semiring, block_segments, block_features, num_warps, interpret)
    return _csr_jit(data, None, None, offsets, cfg=cfg)


def gather_segment_reduce_csr(x, src, weights, offsets, semiring: Semiring, *, block_segments=None,
                              block_features=None, num_warps=None, interpret=False):
    """``out[v] = ⨁_{e in offsets[v]:offsets[v+1]} weights[e] ⊗ x[src[e]]`` (one fused pass).

    Args:
      x: ``(R, *features)`` source rows (pages).
      src: ``(E,)`` int rows of ``x`` in ``[0, R)``, CSR-ordered by destination (the kernel
        clamps a row outside that range; the reference's indexing would wrap a negative one).
      weights: ``(E,)`` or ``(E, *features)`` of ``x.dtype``, same order; ``None``: ⊗ one.
      offsets: ``(N + 1,)`` CSR offsets by destination.
      semiring, block_segments, block_features, num_warps, interpret: as
        :func:`segment_reduce_csr`.

    Returns:
      ``(N, *features)``; destinations without edges hold ``semiring.zero``.
    """
    x, src, offsets = jnp.asarray(x), jnp.asarray(src), jnp.asarray(offsets)
    weights = None if weights is None else jnp.asarray(weights)
    _check_semiring(semiring, x.dtype, "x")
    _check_int("src", src)
    _check_int("offsets", offsets)
    if x.ndim < 1 or offsets.shape[0] < 1:
        raise InvalidArgumentError(f"need x (R, *features) and offsets (N + 1,), got {x.shape=}, {offsets.shape=}")
    _check_weights(weights, src.shape[0], x.shape[1:], x.dtype)
    cfg = _cfg(semiring, block_segments, block_features, num_warps, interpret)
    return _csr_jit(x, src, weights, offsets, cfg=cfg)


def segment_reduce(data, segment_ids, num_segments: int, semiring: Semiring, *, indices_are_sorted=False,
                   block_segments=None, block_features=None, num_warps=None, interpret=False):
    """Drop-in for ``semiring.segment_reduce(data, segment_ids, num_segments)`` (Pallas kernel).

    Sorts ``data`` into CSR order first (skipped with ``indices_are_sorted=True``); for a
    layout reused across calls, keep the CSR arrays and call :func:`segment_reduce_csr`.
    Other arguments as there.
    """
    data, ids = jnp.asarray(data), jnp.asarray(segment_ids)
    _check_semiring(semiring, data.dtype, "data")
    _check_int("segment_ids", ids)
    if data.ndim < 1 or data.shape[0] != ids.shape[0]:
        raise InvalidArgumentError(f"data must be (len(segment_ids), *features), got {data.shape=}, {ids.shape=}")
    cfg = _cfg(semiring, block_segments, block_features, num_warps, interpret)
    return _by_ids_jit(data, None, None, ids, num_segments=int(num_segments), sorted_ids=bool(indices_are_sorted),
                       cfg=cfg)


def gather_segment_reduce(x, src, weights, segment_ids, num_segments: int, semiring: Semiring, *,
                          indices_are_sorted=False, block_segments=None, block_features=None, num_warps=None,
                          interpret=False):
    """``⨁_{e: segment_ids[e] == v} weights[e] ⊗ x[src[e]]`` (Pallas kernel); see
    :func:`gather_segment_reduce_csr` for the arguments. Equals
    :func:`gather_segment_reduce_reference`.
    """
    src, ids = jnp.asarray(src), jnp.asarray(segment_ids)
    _check_int("src", src)
    _check_int("segment_ids", ids)
    if src.shape != ids.shape:
        raise InvalidArgumentError(f"src and segment_ids must have one shape, got {src.shape=}, {ids.shape=}")
    x = jnp.asarray(x)
    weights = None if weights is None else jnp.asarray(weights)
    _check_semiring(semiring, x.dtype, "x")
    if x.ndim < 1:
        raise InvalidArgumentError(f"x must be (R, *features), got {x.shape=}")
    _check_weights(weights, src.shape[0], x.shape[1:], x.dtype)
    cfg = _cfg(semiring, block_segments, block_features, num_warps, interpret)
    return _by_ids_jit(x, src, weights, ids, num_segments=int(num_segments), sorted_ids=bool(indices_are_sorted),
                       cfg=cfg)


@functools.partial(jax.jit, static_argnames=("num_segments", "sorted_ids", "cfg"))
def _by_ids_jit(x, src, weights, ids, *, num_segments, sorted_ids, cfg):
    """Segment ids -> CSR (sort unless sorted) -> the kernel, in one compiled program."""
    order, offsets = csr_from_segment_ids(ids, num_segments, indices_are_sorted=sorted_ids)
    if not sorted_ids:
        if src is None:
            x = x[order]
        else:
            src = src[order]
            weights = None if weights is None else weights[order]
    return _csr_op(cfg, x, src, weights, offsets)
