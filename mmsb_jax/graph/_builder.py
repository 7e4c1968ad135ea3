"""The :class:`ShadowPageGraph` builder (Layer 3): a mutable DAG of page dependencies.

Edges live in growable numpy columns (source, destination, weight, type, alive) in insertion
order, so bulk inserts never create per-edge Python objects. Acyclicity is kept at all times:

* a single insert checks incrementally with Pearce–Kelly dynamic topological order: only the
  nodes whose order index lies between the two endpoints are searched;
* a bulk insert checks once with a level-synchronous Kahn pass over the whole graph, O(V + E).

A refused edge raises :class:`~mmsb_jax.GraphCycleError` and leaves the graph unchanged.
The edge columns and their checks live in :mod:`._edges`, the bulk edits in :mod:`._bulk`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .._errors import GraphCycleError, InvalidArgumentError
from . import _topo
from ._bulk import BulkEdits
from ._edges import (
    _COLUMN_DTYPES,
    _COLUMNS,
    _TYPE_CODE,
    DATA,
    DERIVE,
    EDGE_TYPES,
    _check_id,
    _type_code,
    _weight_value,
)


class ShadowPageGraph(BulkEdits):
    """A mutable DAG of page dependencies whose edges carry semiring weights.

    Nodes are int ids in ``[0, 2**31)``. An edge ``u -> v`` says page ``v`` depends on ``u``;
    under a semiring, ``x[v] = b[v] ⊕ ⨁_u (w_uv ⊗ x[u])`` (see :func:`propagate`).
    Edges are keyed by ``(u, v)``: adding an existing edge again replaces its weight and type
    but keeps its position in insertion order, so :meth:`edges` (the order
    :func:`with_weights` expects) only changes when edges are added or removed.

    Edge types: ``"data"`` edges carry values; ``"control"``, ``"gpu_sync"`` and
    ``"compiler"`` edges only order nodes (they count for cycles and topological order, not
    for values). :meth:`derive` adds ``"derive"`` edges for recompute functions.

    Example:
      >>> from mmsb_jax.graph import ShadowPageGraph
      >>> g = ShadowPageGraph()
      >>> g.add_dependency(0, 1, weight=2.0)
      >>> g.add_dependency(1, 2)
      >>> g.topological_order()
      [0, 1, 2]
      >>> g.parents(2)
      [1]
    """

    def __init__(self):
        for name, dtype in zip(_COLUMNS, _COLUMN_DTYPES):
            setattr(self, name, np.zeros(16, dtype))
        self._n = 0  # used slots
        self._n_alive = 0
        self._ord: dict[int, int] = {}  # node -> topological order index (Pearce–Kelly)
        self._lo = 0
        self._hi = -1
        self._index: dict[int, int] | None = None  # (u << 32 | v) -> slot, built lazily
        self._children: dict[int, dict[int, int]] | None = None  # u -> {v: slot}, lazily
        self._parents: dict[int, dict[int, int]] | None = None
        self._derived: dict[int, tuple[Callable, tuple[int, ...]]] = {}
        self._version = 0

    # ------------------------------------------------------------------ queries
    @property
    def num_edges(self) -> int:
        """Number of live edges (all types): the length :func:`with_weights` expects."""
        return self._n_alive

    @property
    def num_nodes(self) -> int:
        return len(self._ord)

    @property
    def version(self) -> int:
        """Bumped by every structural or weight change."""
        return self._version

    def nodes(self) -> list[int]:
        """All node ids, sorted."""
        return sorted(self._ord)

    def node_ids(self) -> np.ndarray:
        """All node ids as an int64 array (in no particular order)."""
        return np.fromiter(self._ord, np.int64, len(self._ord))

    def has_node(self, u: int) -> bool:
        return int(u) in self._ord

    def has_edge(self, u: int, v: int) -> bool:
        return (int(u) << 32 | int(v)) in self._key_index()

    def edges(self) -> list[tuple[int, int]]:
        """Live edges ``(u, v)`` in insertion order: the order of ``w`` in :func:`with_weights`."""
        a = self.edge_arrays()
        return list(zip(a["src"].tolist(), a["dst"].tolist()))

    def edge_arrays(self) -> dict:
        """Live edges as numpy columns in :meth:`edges` order.

        Keys: ``src``, ``dst`` (int64), ``weight`` (float64, NaN where the weight is the
        semiring's one), ``default_weight`` (bool), ``edge_type`` (str array).
        """
        m = self._alive[: self._n]
        return {
            "src": self._src[: self._n][m].copy(),
            "dst": self._dst[: self._n][m].copy(),
            "weight": self._w[: self._n][m].copy(),
            "default_weight": self._wdef[: self._n][m].copy(),
            "edge_type": np.asarray(EDGE_TYPES)[self._type[: self._n][m]],
            "type_code": self._type[: self._n][m].copy(),
        }

    def weight(self, u: int, v: int):
        """The weight of ``u -> v`` (``None`` = the semiring's one)."""
        slot = self._slot(u, v)
        return None if self._wdef[slot] else float(self._w[slot])

    def edge_type(self, u: int, v: int) -> str:
        return EDGE_TYPES[self._type[self._slot(u, v)]]

    def parents(self, v: int) -> list[int]:
        """Sources of the live edges into ``v``, in insertion order."""
        d = self._adj()[1].get(int(v), {})
        return [u for u, _ in sorted(d.items(), key=lambda kv: kv[1])]

    def children(self, u: int) -> list[int]:
        """Destinations of the live edges out of ``u``, in insertion order."""
        d = self._adj()[0].get(int(u), {})
        return [v for v, _ in sorted(d.items(), key=lambda kv: kv[1])]

    def derived(self) -> dict[int, tuple[Callable, tuple[int, ...]]]:
        """``{child: (fn, parents)}`` for every node added with :meth:`derive`."""
        return dict(self._derived)

    def topological_order(self) -> list[int]:
        """All nodes in an order where every edge goes forward (all edge types count)."""
        return sorted(self._ord, key=self._ord.__getitem__)

    def levels(self, edge_types: Sequence[str] | None = None) -> list[list[int]]:
        """Nodes grouped by longest-path depth: level 0 has no parents, level ``i`` nodes have
        a parent on level ``i - 1``. ``edge_types`` restricts which edges count (default all).
        """
        nodes = np.asarray(sorted(self._ord), dtype=np.int64)
        if nodes.size == 0:
            return []
        a = self.edge_arrays()
        m = np.ones(a["src"].size, bool)
        if edge_types is not None:
            codes = [_TYPE_CODE[t] for t in edge_types]
            m = np.isin(a["type_code"], codes)
        lvl = _levels_of(nodes, a["src"][m], a["dst"][m])
        out: list[list[int]] = [[] for _ in range(int(lvl.max()) + 1)]
        for node, lv in zip(nodes.tolist(), lvl.tolist()):
            out[lv].append(node)
        return out

    # ------------------------------------------------------------------ single edits
    def add_node(self, u: int) -> None:
        """Register ``u`` as a node without edges (no-op if it exists)."""
        u = _check_id(u, "u")
        if u not in self._ord:
            self._lo -= 1
            self._ord[u] = self._lo
            self._version += 1

    def add_dependency(self, u: int, v: int, weight=None, edge_type: str = "data") -> None:
        """Add (or re-weight) the edge ``u -> v``: page ``v`` depends on page ``u``.

        Raises:
          GraphCycleError: the edge would close a cycle (``.cycle`` is the node path, first
            node repeated at the end); the graph is left unchanged.
          InvalidArgumentError: bad ids, weight or edge type, or ``v`` is a derived node.
        """
        u = _check_id(u, "u")
        v = _check_id(v, "v")
        code = _type_code(edge_type)
        w, wdef = _weight_value(weight)
        self._add_one(u, v, w, wdef, code)

    def _add_one(self, u, v, w, wdef, code) -> None:
        if code == DATA and v in self._derived:
            raise InvalidArgumentError(f"node v={v} is derived (see derive()); it takes no data edges")
        key = u << 32 | v
        index = self._key_index()
        slot = index.get(key)
        if slot is not None:
            if (self._type[slot] == DERIVE) != (code == DERIVE):
                raise InvalidArgumentError(f"edge ({u}, {v}) is a derive edge of node {v}; use derive()")
            self._w[slot], self._wdef[slot], self._type[slot] = w, wdef, code
            self._version += 1
            return
        if u == v:
            raise GraphCycleError([u, u])
        self._check_and_order(u, v)
        slot = self._append(np.array([u]), np.array([v]), np.array([w]), np.array([wdef]), np.array([code]))
        index[key] = int(slot[0])
        if self._children is not None:
            self._children.setdefault(u, {})[v] = int(slot[0])
            self._parents.setdefault(v, {})[u] = int(slot[0])

    def remove_dependency(self, u: int, v: int) -> None:
        """Remove the edge ``u -> v`` (the nodes stay).

        Raises:
          InvalidArgumentError: there is no such edge.
        """
        u, v = int(u), int(v)
        slot = self._slot(u, v)
        if self._type[slot] == DERIVE:
            raise InvalidArgumentError(f"edge ({u}, {v}) is a derive edge; use underive({v})")
        self._remove_slot(u, v, slot)
        self._maybe_compact()

    def _remove_slot(self, u, v, slot) -> None:
        self._alive[slot] = False
        self._n_alive -= 1
        if self._index is not None:
            self._index.pop(u << 32 | v, None)
        if self._children is not None:
            self._children[u].pop(v, None)
            self._parents[v].pop(u, None)
        self._version += 1

    def remove_node(self, u: int) -> None:
        """Remove ``u``, its edges and its derive function."""
        u = int(u)
        if u not in self._ord:
            raise InvalidArgumentError(f"node u={u} is not in the graph")
        for v in self.children(u):
            if v in self._derived:
                raise InvalidArgumentError(f"node u={u} is a parent of derived node {v}; underive({v}) first")
        self._derived.pop(u, None)  # only once nothing can refuse: a refused call changes nothing
        ch, pa = self._adj()
        for v, s in list(ch.get(u, {}).items()):
            self._remove_slot(u, v, s)
        for p, s in list(pa.get(u, {}).items()):
            self._remove_slot(p, u, s)
        del self._ord[u]
        self._version += 1
        self._maybe_compact()

    # ------------------------------------------------------------------ derive
    def derive(self, child: int, fn: Callable, parents: Sequence[int]) -> None:
        """Make ``child`` a computed page: ``x[child] = fn(*(x[p] for p in parents))``.

        ``fn`` must be a jittable function of pages returning a page of the same shape and
        dtype; it runs inside the compiled topological program (vmapped over the derived
        nodes that share it), replacing the semiring reduction and ignoring ``b[child]``.
        Incremental propagation skips it when no parent changed. Calling ``derive`` again
        replaces the function and parents.

        Raises:
          GraphCycleError: a parent depends on ``child``; the graph is left unchanged.
          InvalidArgumentError: ``child`` already has data edges, or bad arguments.

        Example:
          >>> import jax.numpy as jnp
          >>> from mmsb_jax import semirings
          >>> from mmsb_jax.graph import ShadowPageGraph, propagate
          >>> g = ShadowPageGraph()
          >>> g.derive(2, lambda a, b: a * b, parents=[0, 1])
          >>> cg = g.compile(semirings.REAL, num_nodes=3)
          >>> propagate(cg, jnp.array([3.0, 4.0, 0.0])).tolist()
          [3.0, 4.0, 12.0]
        """
        child = _check_id(child, "child")
        parents = tuple(_check_id(p, "parent") for p in parents)
        if not callable(fn):
            raise InvalidArgumentError(f"fn must be callable, got fn={fn!r}")
        if not parents:
            raise InvalidArgumentError("derive needs at least one parent")
        data_parents = [p for p in self.parents(child) if self._type[self._slot(p, child)] == DATA] if child in self._ord else []
        if data_parents:
            raise InvalidArgumentError(f"node child={child} already has data parents {data_parents}")
        old = self._derived.get(child)
        if old is not None:
            self.underive(child)
        added = []
        try:
            for p in dict.fromkeys(parents):
                if self._key_index().get(p << 32 | child) is not None:
                    continue  # an ordering edge already there; keep it
                self._add_one(p, child, np.nan, True, DERIVE)
                added.append(p)
        except GraphCycleError:
            for p in added:
                self._remove_slot(p, child, self._slot(p, child))
            if old is not None:
                self.derive(child, *old)
            raise
        self.add_node(child)
        self._derived[child] = (fn, parents)
        self._version += 1

    def underive(self, child: int) -> None:
        """Drop ``child``'s derive function and its derive edges."""
        child = int(child)
        if child not in self._derived:
            raise InvalidArgumentError(f"node child={child} is not derived")
        del self._derived[child]
        for p, s in list(self._adj()[1].get(child, {}).items()):
            if self._type[s] == DERIVE:
                self._remove_slot(p, child, s)
        self._version += 1

    # ------------------------------------------------------------------ internals
    def _append(self, u, v, w, wdef, code) -> np.ndarray:
        k = u.size
        need = self._n + k
        if need > self._src.size:
            cap = max(need, 2 * self._src.size)
            for name in _COLUMNS:
                old = getattr(self, name)
                arr = np.zeros(cap, old.dtype)
                arr[: self._n] = old[: self._n]
                setattr(self, name, arr)
        sl = slice(self._n, need)
        self._src[sl], self._dst[sl], self._w[sl], self._wdef[sl], self._type[sl] = u, v, w, wdef, code
        self._alive[sl] = True
        slots = np.arange(self._n, need)
        self._n = need
        self._n_alive += k
        self._version += 1
        return slots

    def _maybe_compact(self) -> None:
        dead = self._n - self._n_alive
        if dead > 1024 and dead > self._n // 2:
            m = self._alive[: self._n]
            for name in _COLUMNS:
                setattr(self, name, getattr(self, name)[: self._n][m].copy())
            self._n = self._n_alive
            self._index = None
            self._children = self._parents = None

    def _key_index(self) -> dict[int, int]:
        if self._index is None:
            m = self._alive[: self._n]
            slots = np.flatnonzero(m)
            keys = self._src[slots] << 32 | self._dst[slots]
            self._index = dict(zip(keys.tolist(), slots.tolist()))
        return self._index

    def _slot(self, u, v) -> int:
        slot = self._key_index().get(int(u) << 32 | int(v))
        if slot is None:
            raise InvalidArgumentError(f"no edge ({u}, {v}) in the graph")
        return slot

    def _adj(self):
        if self._children is None:
            ch: dict[int, dict[int, int]] = {}
            pa: dict[int, dict[int, int]] = {}
            slots = np.flatnonzero(self._alive[: self._n])
            for s, u, v in zip(slots.tolist(), self._src[slots].tolist(), self._dst[slots].tolist()):
                ch.setdefault(u, {})[v] = s
                pa.setdefault(v, {})[u] = s
            self._children, self._parents = ch, pa
        return self._children, self._parents

    def _check_and_order(self, u: int, v: int) -> None:
        """Keep ``_ord`` a topological order after adding ``u -> v`` (Pearce–Kelly)."""
        if u not in self._ord:
            self._lo -= 1
            self._ord[u] = self._lo
        if v not in self._ord:
            self._hi += 1
            self._ord[v] = self._hi
        children, parents = self._adj()
        _topo.pearce_kelly(self._ord, children, parents, u, v)

    def copy(self) -> "ShadowPageGraph":
        """An independent copy (derive functions are shared)."""
        g = ShadowPageGraph.__new__(ShadowPageGraph)
        g.__dict__.update(self.__dict__)
        for name in _COLUMNS:
            setattr(g, name, getattr(self, name).copy())
        g._ord = dict(self._ord)
        g._derived = dict(self._derived)
        g._index = None
        g._children = g._parents = None
        return g

    def relabeled(self, new_id) -> "ShadowPageGraph":
        """A copy with node ``u`` renamed ``new_id[u]`` (``new_id``: an int array over every
        node id, one-to-one on the nodes): the same edges, weights and types in the same
        insertion order (so every node sums its parents in the same order), the same derived
        nodes with renamed parents.

        Example:
          >>> import numpy as np
          >>> g = ShadowPageGraph(); g.add_dependency(0, 1, weight=2.0); g.add_dependency(1, 2)
          >>> h = g.relabeled(np.array([2, 0, 1]))
          >>> h.edges(), h.weight(2, 0)
          ([(2, 0), (0, 1)], 2.0)
        """
        new_id = np.asarray(new_id, np.int64)
        g = self.copy()
        live = np.flatnonzero(self._alive[: self._n])
        g._src[live] = new_id[self._src[live]]
        g._dst[live] = new_id[self._dst[live]]
        g._ord = {int(new_id[u]): o for u, o in self._ord.items()}
        g._derived = {int(new_id[c]): (fn, tuple(int(new_id[p]) for p in ps)) for c, (fn, ps) in self._derived.items()}
        g._version = self._version + 1
        return g

    def compile(self, semiring, num_nodes: int | None = None, **kwargs):
        """Compile to a static-shape :class:`CompiledGraph` for :func:`propagate`.

        See :func:`mmsb_jax.graph.compile_graph` for the arguments.
        """
        from ._compile import compile_graph

        return compile_graph(self, semiring, num_nodes=num_nodes, **kwargs)

    def __repr__(self) -> str:
        return f"ShadowPageGraph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, derived={len(self._derived)})"


def _levels_of(nodes: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Longest-path level of each of the sorted ``nodes`` (edges must form a DAG)."""
    s = np.searchsorted(nodes, src)
    d = np.searchsorted(nodes, dst)
    level, ok = _topo.kahn_levels(s, d, nodes.size)
    assert ok, "graph builder invariant broken: cycle"
    return level
