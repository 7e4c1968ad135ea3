"""Random DAG generators for tests and benchmarks: wide random DAGs, power-law DAGs, deep
DAGs, chains.

Each returns ``(src, dst, weights)`` numpy arrays (int64, int64, float64) for
:meth:`ShadowPageGraph.add_dependencies`; node ids are ``0..n-1`` in a random order (not a
topological one), and every pair appears once.
"""

from __future__ import annotations

import numpy as np


def random_dag(n: int, m: int, seed: int = 0):
    """A wide random DAG: ``m`` edges drawn as (parent, child) with the child uniform in a
    hidden topological order and the parent uniform before it (duplicates dropped, so a few
    fewer than ``m``). 100k nodes / 500k edges give ~100 levels and in-degrees ~Poisson(5).

    Example:
      >>> from mmsb_jax.graph import random_dag
      >>> src, dst, w = random_dag(100, 300, seed=1)
      >>> bool((src != dst).all()) and src.size <= 300
      True
    """
    rng = np.random.default_rng(seed)
    c = rng.integers(1, n, size=m)
    p = (rng.random(m) * c).astype(np.int64)
    key = np.unique(p * n + c)
    p, c = key // n, key % n
    perm = rng.permutation(n)
    return perm[p], perm[c], rng.uniform(0.0, 1.0, p.size)


def power_law_dag(n: int, seed: int = 0, alpha: float = 2.2, max_in_degree: int = 1000, skew: float = 3.0):
    """A DAG with power-law degrees: node ``c`` (in a hidden topological order) takes a
    Zipf(``alpha``)-distributed number of parents (at most ``max_in_degree``; mean ~3 for
    the default), each ``floor(c * u**skew)`` for a uniform ``u``, so early nodes become hubs
    with thousands of children (duplicates dropped). 100k nodes give ~290k edges, in-degrees
    up to ~900 and out-degrees up to ~6,700.

    Example:
      >>> from mmsb_jax.graph import power_law_dag
      >>> src, dst, w = power_law_dag(1000, seed=1)
      >>> bool((src != dst).all()), int(np.bincount(src).max()) > 50
      (True, True)
    """
    rng = np.random.default_rng(seed)
    k = np.minimum(rng.zipf(alpha, n), max_in_degree)
    k[0] = 0
    c = np.repeat(np.arange(n, dtype=np.int64), k)
    p = (c * rng.random(c.size) ** skew).astype(np.int64)
    key = np.unique(p * n + c)
    p, c = key // n, key % n
    perm = rng.permutation(n)
    return perm[p], perm[c], rng.uniform(0.0, 1.0, p.size)


def deep_dag(n: int = 2000, m: int = 9398, depth: int = 311, seed: int = 0, reach: int = 8):
    """A deep DAG of exactly ``depth`` levels and exactly ``m`` edges (the defaults: the
    2,000-node, 9,398-edge, 311-level graph of issue #12).

    Levels: every level gets one node, the other ``n - depth`` nodes a uniform level. Every
    node above level 0 gets one parent on the level just below (so the longest path has
    ``depth`` nodes); the remaining edges join a uniform non-root child to a uniform node
    1..``reach`` levels below it.

    Example:
      >>> import numpy as np
      >>> from mmsb_jax.graph import ShadowPageGraph, deep_dag
      >>> src, dst, w = deep_dag()
      >>> g = ShadowPageGraph(); g.add_dependencies(src, dst, w)
      >>> len(g.levels()), g.num_edges
      (311, 9398)
    """
    if not 1 <= depth <= n or m < n - depth:
        raise ValueError(f"need 1 <= depth <= n and m >= n - depth, got {n=} {m=} {depth=}")
    rng = np.random.default_rng(seed)
    level = np.sort(np.concatenate([np.arange(depth), rng.integers(0, depth, n - depth)]))
    start = np.searchsorted(level, np.arange(depth + 1))

    def node_on(lv):
        return start[lv] + (rng.random(lv.size) * (start[lv + 1] - start[lv])).astype(np.int64)

    child = np.flatnonzero(level > 0)
    keys = np.unique(node_on(level[child] - 1) * n + child)
    while keys.size < m:
        c = rng.choice(child, 2 * (m - keys.size) + 16)
        p = node_on(np.maximum(level[c] - 1 - rng.integers(0, reach, c.size), 0))
        extra = np.setdiff1d(np.unique(p * n + c), keys)
        keys = np.union1d(keys, rng.permutation(extra)[: m - keys.size])
    p, c = keys // n, keys % n
    perm = rng.permutation(n)
    return perm[p], perm[c], rng.uniform(0.1, 1.0, p.size)


def chain(n: int, seed: int = 0):
    """A chain of ``n`` nodes (``n`` levels, one edge per level) in a random id order.

    Example:
      >>> from mmsb_jax.graph import chain
      >>> src, dst, w = chain(4)
      >>> src.size
      3
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return perm[:-1].astype(np.int64), perm[1:].astype(np.int64), rng.uniform(0.1, 1.0, max(n - 1, 0))
