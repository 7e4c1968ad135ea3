"""Checking a checkpoint before a state takes it.

Every field that decides what the restored state holds is cross-checked against the others
and against the arrays (whose bytes the manifest's CRC-32Cs already cover, as the manifest is
covered by its own): the epoch against the epoch array, the page table against the pools'
sizes, the dependencies against the live pages. An edited or damaged checkpoint is refused
with a :class:`~mmsb_jax.SerializationError` naming it; nothing is allocated beyond what its
files hold.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._checks import is_int
from .._errors import SerializationError
from ..log._encode import BadRecord, dtype_from_name
from ..telemetry._counters import STATE_COUNTERS, valid_counters

_TABLE = ("id", "pool", "slot", "epoch")
_GRAPH = ("parent", "child", "weight", "type")


@dataclasses.dataclass
class CheckedPool:
    index: int
    shape: tuple
    dtype: np.dtype
    location: str
    high_water: int
    array: np.ndarray


@dataclasses.dataclass
class CheckedCheckpoint:
    """What a checkpoint holds, checked: ready to be installed into an empty state."""

    epoch: int
    next_page_id: int
    pools: list[CheckedPool]
    ids: np.ndarray
    pool: np.ndarray
    slot: np.ndarray
    page_epoch: np.ndarray
    edges: list  # (parent, child, weight or None, edge type), in propagation order
    derived: list  # (page, function name, parent pages)
    counters: dict | None = None  # the state's counters (None: a checkpoint written before they were kept)


def check_checkpoint(directory: str, manifest: dict, tree: dict, semiring: str) -> CheckedCheckpoint:
    """Cross-check a checkpoint's manifest and arrays; see the module docstring.

    Raises:
      SerializationError: naming ``directory`` and the first inconsistency found.
    """

    def bad(msg):
        raise SerializationError(f"checkpoint {directory!r} is inconsistent: {msg}")

    def field(name, check, what):
        if name not in manifest:
            bad(f"its manifest has no {name!r}")
        value = manifest[name]
        if not check(value):
            bad(f"manifest field {name}={value!r} is not {what}")
        return value

    count = lambda x: is_int(x) and x >= 0  # noqa: E731
    epoch = field("epoch", count, "a non-negative int")
    next_id = field("next_page_id", count, "a non-negative int")
    if field("semiring", lambda x: isinstance(x, str), "a str") != semiring:
        bad(f"it was written under semiring {manifest['semiring']!r}, the state's is {semiring!r}")
    descs = field("pools", lambda x: isinstance(x, list), "a list")
    types = field("edge_types", lambda x: isinstance(x, list) and all(isinstance(t, str) for t in x), "a list of str")
    n_deps = field("dependencies", count, "a non-negative int")

    stamp = np.asarray(tree.get("epoch"))
    if stamp.shape != (1,) or stamp.dtype.kind not in "iu" or int(stamp[0]) != epoch:
        bad(f"its epoch array holds {stamp.tolist()}, but its manifest says epoch {epoch}")

    arrays = tree.get("pools") or {}
    if not isinstance(arrays, dict) or sorted(arrays) != sorted(f"pool_{i}" for i in range(len(descs))):
        bad(f"it holds pool arrays {sorted(arrays) if isinstance(arrays, dict) else arrays!r} for {len(descs)} pools")
    pools = []
    for i, d in enumerate(descs):
        if not isinstance(d, dict):
            bad(f"pool {i} is described by {d!r}")
        shape, dname, loc, hw = d.get("shape"), d.get("dtype"), d.get("location"), d.get("high_water")
        if d.get("index") != i:
            bad(f"pool {i} says index {d.get('index')!r}")
        if not (isinstance(shape, list) and all(is_int(s) and s > 0 for s in shape)):
            bad(f"pool {i} has shape {shape!r}")
        if not isinstance(dname, str) or not isinstance(loc, str) or not count(hw):
            bad(f"pool {i} has dtype {dname!r}, location {loc!r}, high_water {hw!r}")
        try:
            dtype = dtype_from_name(dname)
        except BadRecord:
            bad(f"pool {i} has dtype {dname!r}")
        arr = arrays[f"pool_{i}"]
        # more rows than pages: zero padding to whole shards (a multi-process checkpoint), ignored
        if (arr.ndim != len(shape) + 1 or arr.shape[0] < max(hw, 1) or tuple(arr.shape[1:]) != tuple(shape)
                or np.dtype(arr.dtype) != dtype):
            bad(
                f"pool_{i} holds {np.dtype(arr.dtype)}{tuple(arr.shape)}, but its manifest says "
                f"{max(hw, 1)} pages of {dtype}{tuple(shape)}"
            )
        pools.append(CheckedPool(i, tuple(shape), dtype, loc, hw, arr))

    table = tree.get("page_table") or {}
    if table and sorted(table) != sorted(_TABLE):
        bad(f"its page table has columns {sorted(table)}")
    cols = [np.asarray(table.get(c, np.zeros(0, np.int64))) for c in _TABLE]
    if any(c.ndim != 1 or c.shape != cols[0].shape or (c.size and c.dtype.kind not in "iu") for c in cols):
        bad("its page table columns differ in length or are not integer arrays")
    ids, pool, slot, page_epoch = (c.astype(np.int64) for c in cols)
    if ids.size:
        if np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= next_id:
            bad(f"its page ids are not ascending ids below next_page_id={next_id}")
        if pool.min() < 0 or pool.max() >= len(pools):
            bad(f"a page names pool {int(pool.max() if pool.max() >= len(pools) else pool.min())} of {len(pools)}")
        hw = np.array([p.high_water for p in pools], np.int64)[pool]
        if np.any(slot < 0) or np.any(slot >= hw):
            bad("a page's slot lies outside its pool's pages")
        if np.unique(pool * (int(hw.max()) + 1) + slot).size != ids.size:
            bad("two pages share one slot")
        if page_epoch.min() < 1 or page_epoch.max() > epoch:
            bad(f"a page was last changed at an epoch outside 1..{epoch}")
    elif next_id < 0:
        bad(f"next_page_id={next_id}")

    graph = tree.get("graph") or {}
    if graph and sorted(graph) != sorted(_GRAPH):
        bad(f"its dependency arrays are {sorted(graph)}")
    g = [np.asarray(graph.get(c, np.zeros(0))) for c in _GRAPH]
    if any(c.ndim != 1 or c.shape != g[0].shape for c in g) or g[0].size != n_deps:
        bad(f"its dependency arrays do not hold the {n_deps} dependencies its manifest counts")
    edges = []
    if n_deps:
        parent, child, t = (c.astype(np.int64) for c in (g[0], g[1], g[3]))
        live = np.isin(parent, ids) & np.isin(child, ids)
        if not live.all() or t.min() < 0 or t.max() >= len(types):
            bad("a dependency names a page that is not live, or an unknown edge type")
        where = dict(zip(ids.tolist(), pool.tolist()))
        if any(where[u] != where[v] for u, v in zip(parent.tolist(), child.tolist())):
            bad("a dependency links pages of two pools")
        weight = g[2].astype(np.float64)
        edges = [(u, v, None if np.isnan(w) else float(w), types[k])
                 for u, v, w, k in zip(parent.tolist(), child.tolist(), weight.tolist(), t.tolist())]
    derived = []
    live_ids = set(ids.tolist())
    for d in manifest.get("derived", []) if isinstance(manifest.get("derived", []), list) else [None]:
        ok = (isinstance(d, list) and len(d) == 3 and is_int(d[0]) and isinstance(d[1], str) and d[1]
              and isinstance(d[2], list) and d[2] and all(is_int(p) for p in d[2]))
        if not ok or d[0] not in live_ids or not set(d[2]) <= live_ids:
            bad(f"manifest entry derived={d!r} is not [live page, function name, [live parent pages]]")
        derived.append((int(d[0]), d[1], tuple(int(p) for p in d[2])))
    counters = manifest.get("counters")
    if counters is not None and not valid_counters(counters):
        bad(f"manifest field counters={counters!r} is not a dict of {', '.join(STATE_COUNTERS)} to non-negative ints")
    return CheckedCheckpoint(epoch, next_id, pools, ids, pool, slot, page_epoch, edges, derived, counters)
