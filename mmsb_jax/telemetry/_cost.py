"""The cost model and the entropy of where writes land (``get_stats(state)["cost"]``).

Every figure comes from what the state measured (its histograms) or holds (its layout);
``None`` where nothing was measured yet. The formulas:

* **Propagation.** ``full_pass_seconds`` = mean of the ``propagate_full`` histogram,
  ``incremental_pass_seconds`` = mean of ``propagate_incremental``;
  ``incremental_speedup = full / incremental`` (> 1: an incremental pass is cheaper).
* **Replay.** ``replay_seconds = tail_bytes / replay_bytes_per_second``: the log bytes since
  the newest checkpoint times the replay throughput the last open measured (bytes of records
  replayed / seconds the replay took). Without a measured open: ``None``.
* **Gather locality** of the layout, per pool with dependencies: ``d = mean |slot(u) - slot(v)|``
  over its edges ``u -> v``, normalised by ``n / 3`` (the expected distance of two uniform
  random slots among the pool's ``n`` used slots): ``gather_distance = d / (n / 3)`` (about 1
  for a random layout, near 0 when edges join neighbouring slots) and
  ``gather_locality = max(0, 1 - gather_distance)``.
* **Memory.** ``memory_overhead = capacity_bytes / live_bytes - 1`` (arena slots allocated
  but not holding a page); ``fragmentation`` per pool ``= free_slots / (pages + free_slots)``
  (freed slots below the high-water mark, reused by the next creates).
* **Write entropy.** With ``c_i`` the writes to page ``i`` since open (over every live page,
  zero-write pages included) and ``p_i = c_i / sum(c)``: ``H = -sum p_i log p_i``, normalised
  by ``log N`` (``N`` = live pages): 1 when writes spread evenly over all pages, 0 when one
  page takes them all (``None`` before any write, 0 with a single page). The same over pools.

Imports nothing of mmsb_jax above the telemetry package.
"""

from __future__ import annotations

import math

import numpy as np


def write_entropy(counts) -> float | None:
    """Shannon entropy of ``counts`` (writes per page or per pool), normalised to ``[0, 1]``
    by ``log(len(counts))``; ``None`` when nothing was written, 0 for a single bin.

    Example:
      >>> write_entropy([5, 5, 5, 5]), write_entropy([9, 0, 0]), write_entropy([0, 0])
      (1.0, 0.0, None)
      >>> round(write_entropy([3, 1]), 3)
      0.811
    """
    c = np.asarray(counts, np.float64).reshape(-1)
    total = c.sum()
    if c.size == 0 or total <= 0:
        return None
    if c.size == 1:
        return 0.0
    p = c[c > 0] / total
    h = float(-(p * np.log(p)).sum())
    return min(1.0, max(0.0, h / math.log(c.size)))


def gather_locality(parent_slots, child_slots, used: int) -> dict:
    """``gather_distance`` and ``gather_locality`` of edges between slots of one pool of
    ``used`` slots (see the module docstring).

    Example:
      >>> gather_locality([0, 1, 2], [1, 2, 3], 300)["gather_locality"]
      0.99
      >>> gather_locality([], [], 10)["gather_distance"] is None
      True
    """
    u = np.asarray(parent_slots, np.int64)
    v = np.asarray(child_slots, np.int64)
    if u.size == 0 or used < 2:
        return {"edges": int(u.size), "mean_slot_distance": None, "gather_distance": None, "gather_locality": None}
    mean = float(np.abs(u - v).mean())
    dist = mean / (used / 3.0)
    return {"edges": int(u.size), "mean_slot_distance": mean, "gather_distance": dist,
            "gather_locality": max(0.0, 1.0 - dist)}


def cost_model(*, full_seconds, incremental_seconds, tail_bytes, tail_records, replay_bytes_per_second,
               pools, edges, page_writes, pool_writes) -> dict:
    """The ``cost`` section of ``get_stats``.

    Args:
      full_seconds, incremental_seconds: mean measured seconds of a full / incremental pass.
      tail_bytes, tail_records: the replay tail (log since the newest checkpoint).
      replay_bytes_per_second: the throughput the last open measured (or ``None``).
      pools: the pools' ``stats()`` dicts.
      edges: pool index -> ``(parent slots, child slots)`` of its dependencies.
      page_writes: writes per live page since open; pool_writes: writes per pool.

    Example:
      >>> c = cost_model(full_seconds=2e-3, incremental_seconds=5e-4, tail_bytes=1000, tail_records=4,
      ...                replay_bytes_per_second=1e6, pools=[], edges={}, page_writes=[1, 1],
      ...                pool_writes=[2])
      >>> c["incremental_speedup"], c["replay_seconds"], c["write_entropy_pages"]
      (4.0, 0.001, 1.0)
    """
    live = sum(p["bytes"] for p in pools)
    cap = sum(p["capacity_bytes"] for p in pools)
    per_pool = []
    for i, p in enumerate(pools):
        used = p["pages"] + p["free_slots"]
        entry = {"pool": i, "memory_overhead": p["capacity_bytes"] / p["bytes"] - 1.0 if p["bytes"] else None,
                 "fragmentation": p["free_slots"] / used if used else 0.0}
        if i in edges:
            entry.update(gather_locality(*edges[i], used))
        per_pool.append(entry)
    return {
        "full_pass_seconds": full_seconds,
        "incremental_pass_seconds": incremental_seconds,
        "incremental_speedup": full_seconds / incremental_seconds if full_seconds and incremental_seconds else None,
        "tail_bytes": tail_bytes,
        "tail_records": tail_records,
        "replay_bytes_per_second": replay_bytes_per_second,
        "replay_seconds": tail_bytes / replay_bytes_per_second if replay_bytes_per_second else None,
        "memory_overhead": cap / live - 1.0 if live else None,
        "write_entropy_pages": write_entropy(page_writes),
        "write_entropy_pools": write_entropy(pool_writes),
        "pools": per_pool,
    }
