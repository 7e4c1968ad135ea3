"""Sparse rows applied in occurrence rounds: last writer wins without sorting the targets.

A batch of sparse rows ``(slots[i], indices[i, :])`` in which pages repeat is applied as a
sequence of *rounds*: round ``r`` holds the ``r``-th row of every page that has one (in batch
order). The rows of a round name distinct pages, so once each row's own repeated indices are
resolved, every target in a round is written once, and applying the rounds in order gives each
target the value of the last row that writes it: the sequential result, bit for bit, with no
dependence on the order XLA applies a scatter.

The host work is linear: each row's round (a stable radix argsort of the slots, 16 bits a pass)
and the rows' order by round; the device runs every round in one compiled loop over fixed-size
chunks of rows, each chunk one unique-index scatter. Measured on the 2-core CPU of this
project, ``route_sparse_batch`` of 100k rows of 16 entries over 10k pages: 0.16 s with the
(target, position) sort of :func:`~mmsb_jax.deltas._router.last_writers`, ~23 ms in rounds,
~15-19 ms with the batch in pipelined parts (:func:`apply_rounds`; docs/performance.md).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..pages import bucket, moved, pool_jit, unmoved
from ._router import _row_repeats, last_writers


#: Entries in rows of repeated pages from which a batch goes in rounds (below, the sort of
#: their targets costs less than the rounds' fixed work; measured, docs/performance.md).
ROUNDS_FROM = 1 << 12


def stable_argsort(keys: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative integer keys below ``bound`` (at
    most ``2**32``), by least-significant-digit radix passes of 16 bits: numpy sorts 16-bit
    keys with a radix sort, ~10x faster here than its merge sort of wider integers.

    Example:
      >>> stable_argsort(np.array([3, 1, 3, 0]), 4).tolist()
      [3, 1, 0, 2]
    """
    if bound <= 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    if bound > 1 << 32:
        return np.argsort(keys, kind="stable")
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    high = (keys[order] >> 16).astype(np.uint16)
    return order[np.argsort(high, kind="stable")]


def round_order(keys: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ordered by round, and the size of each round: round ``r`` holds, for every key
    (in ``[0, bound)``) that occurs more than ``r`` times, the position of its ``r``-th
    occurrence; within a round, positions come in key order.

    Example:
      >>> order, sizes = round_order(np.array([5, 2, 5, 5, 2]), 8)
      >>> order.tolist(), sizes.tolist()
      ([1, 0, 4, 2, 3], [2, 2, 1])
    """
    n = keys.shape[0]
    by_key = stable_argsort(keys, bound)
    sk = np.take(keys, by_key)
    first = np.empty(n, bool)
    first[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    rank = np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))  # in key order
    sizes = np.bincount(rank)
    return np.take(by_key, stable_argsort(rank, sizes.shape[0])), sizes


class RoundPlan(NamedTuple):
    """Arguments of :func:`scatter_rounds` for one batch (see :func:`plan_rounds`)."""

    targets: np.ndarray  # (rows, k) int32 flat targets; entries to skip hold distinct values >= pool size
    values: np.ndarray  # (rows, k), padded like ``targets``
    order: np.ndarray  # row numbers, round by round (padded by one window)
    starts: np.ndarray  # per chunk: its first position in ``order``
    stops: np.ndarray  # per chunk: one past its last position (a chunk never spans two rounds)
    n_chunks: int
    window: int  # rows per chunk (static)
    rounds: int


def plan_rounds(slots: np.ndarray, indices: np.ndarray, values: np.ndarray, page_elems: int,
                capacity: int) -> RoundPlan | None:
    """Plan the rounds of sparse rows ``pool[slots[i], indices[i]] = values[i]`` (validated,
    indices in range).

    Within a row that repeats an index its last entry for it wins; the earlier ones are
    skipped. Returns ``None`` when the flat targets of the pool and the skipped entries do not
    fit in int32 (the caller keeps its other path).

    Example:
      >>> p = plan_rounds(np.array([0, 1, 0]), np.array([[1], [1], [1]]), np.ones((3, 1)), 4, 2)
      >>> p.rounds, p.order[:3].tolist()
      (2, [0, 1, 2])
    """
    n, k = indices.shape
    size = capacity * page_elems
    rows_b = bucket(n, steps=4)
    by_round, per_round = round_order(slots, capacity)
    n_rounds = per_round.shape[0]
    # rows per chunk: a power of two near n / (2 * rounds), so the padding of the rounds' last
    # chunks costs at most about half the batch again
    window = max(16, 1 << max(0, (n // (2 * n_rounds)).bit_length() - 1))
    if size + rows_b * k + window * k >= 2**31:
        return None
    targets = np.empty((rows_b, k), np.int32)
    np.add(indices, (slots.astype(np.int32) * np.int32(page_elems))[:, None], out=targets[:n])
    targets[n:] = 0
    if k > 1:
        rep = np.flatnonzero(_row_repeats(indices, page_elems))
        if rep.size:  # skip every entry a later entry of its own row overwrites
            local = (np.arange(rep.size)[:, None] * page_elems + indices[rep]).reshape(-1)
            win = last_writers(local.astype(np.int64), bound=rep.size * page_elems, scratch=True)
            if win is not None:
                keep = np.zeros(rep.size * k, bool)
                keep[win[0]] = True
                sub = targets[rep].reshape(-1)
                flat_pos = (rep[:, None] * k + np.arange(k)).reshape(-1)
                sub[~keep] = size + flat_pos[~keep]
                targets[rep] = sub.reshape(rep.size, k)
    vals = np.zeros((rows_b, k), values.dtype)
    vals[:n] = values
    order = np.zeros(bucket(n + window, steps=4), np.int32)
    order[:n] = by_round
    ends = np.cumsum(per_round)
    chunks = -(-per_round // window)
    first_chunk = np.repeat(ends - per_round, chunks)
    within = np.arange(int(chunks.sum())) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    starts = first_chunk + within * window
    stops = np.minimum(starts + window, np.repeat(ends, chunks))
    n_chunks = starts.shape[0]
    m = bucket(n_chunks)
    s = np.zeros(m, np.int32)
    e = np.zeros(m, np.int32)
    s[:n_chunks], e[:n_chunks] = starts, stops
    return RoundPlan(targets, vals, order, s, e, n_chunks, window, n_rounds)


@jax.jit
def _in_round_order(targets, values, order):
    # its own program: fused into the loop's, the same gathers cost ~4x more (measured)
    return (jnp.take(targets, order, axis=0, mode="clip"),
            unmoved(jnp.take(moved(values), order, axis=0, mode="clip"), values.dtype))


@functools.partial(pool_jit, static_argnames=("window",))
def _scatter_chunks(pool, targets, values, starts, stops, n_chunks, *, window):
    flat = moved(pool.reshape(-1))  # (bits: bfloat16 NaN payloads stay)
    n, k = targets.shape
    # distinct padding targets past every skipped entry's (unique_indices stays true)
    pad = flat.shape[0] + n * k + jnp.arange(window * k, dtype=jnp.int32).reshape(window, k)
    live = jnp.arange(window)[:, None]
    values = moved(values.astype(pool.dtype))

    def chunk(c, flat):
        lo, hi = starts[c], stops[c]
        t = jnp.where(live < hi - lo, lax.dynamic_slice_in_dim(targets, lo, window), pad)
        v = lax.dynamic_slice_in_dim(values, lo, window)
        return flat.at[t].set(v, mode="drop", unique_indices=True)

    return unmoved(lax.fori_loop(0, n_chunks, chunk, flat), pool.dtype).reshape(pool.shape)


#: Rows from which a batch is planned and applied in parts (in batch order): the device applies
#: one part while the host plans the next (measured on this project's 2-core CPU, 100k rows of
#: 16 over 10k pages: ~17 ms whole, ~14 ms in 4 parts; noisy, docs/performance.md).
PIPELINE_FROM = 1 << 15
PIPELINE_PARTS = 4


def apply_rounds(pool, slots: np.ndarray, indices: np.ndarray, values: np.ndarray, page_elems: int,
                 capacity: int):
    """``pool`` (donated) with sparse rows ``pool[slots[i], indices[i]] = values[i]`` applied in
    rounds (:func:`plan_rounds`, :func:`scatter_rounds`), or ``None`` (nothing applied) when
    their targets do not fit int32. From :data:`PIPELINE_FROM` rows the batch goes in
    :data:`PIPELINE_PARTS` consecutive parts, each planned while the device applies the one
    before: the parts in batch order give the sequential result.

    Example:
      >>> import jax.numpy as jnp
      >>> out = apply_rounds(jnp.zeros((1, 2), jnp.int32), np.array([0, 0]), np.array([[1], [1]]),
      ...                    np.array([[5], [7]], np.int32), 2, 1)
      >>> out.tolist()
      [[0, 7]]
    """
    n, k = indices.shape
    if capacity * page_elems + (2 * bucket(n, steps=4) + 16) * k >= 2**31:  # then every part's plan fits
        return None
    parts = PIPELINE_PARTS if n >= PIPELINE_FROM else 1
    bounds = [n * i // parts for i in range(parts + 1)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        plan = plan_rounds(slots[lo:hi], indices[lo:hi], values[lo:hi], page_elems, capacity)
        pool = scatter_rounds(pool, plan)
    return pool


def scatter_rounds(pool, plan: RoundPlan):
    """Apply planned rounds (:func:`plan_rounds`) to ``pool`` (donated): chunk ``c`` writes the
    rows ``plan.order[starts[c]:stops[c]]``, ``pool.flat[targets[row]] = values[row]``, chunks in
    order. Targets at or past the pool's size are skipped.

    Example:
      >>> import jax.numpy as jnp
      >>> p = plan_rounds(np.array([0, 0]), np.array([[1], [1]]), np.array([[5], [7]], np.int32), 2, 1)
      >>> scatter_rounds(jnp.zeros((1, 2), jnp.int32), p).tolist()
      [[0, 7]]
    """
    targets, values = _in_round_order(plan.targets, plan.values, plan.order)
    return _scatter_chunks(pool, targets, values, plan.starts, plan.stops, plan.n_chunks, window=plan.window)
