"""Dependencies, derived pages and observers for :class:`MMSBState`: edges between pages of one pool."""

from __future__ import annotations

import inspect

import jax
import numpy as np

from .._errors import DeriveFunctionError, GraphCycleError, InvalidArgumentError, PageNotFoundError
from ..graph import ShadowPageGraph
from ..semirings import weights_to_carrier
from ..semirings._carriers import first_negative
from ..pages import PagePool
from ..deltas._pool_ops import host_rows
from . import _inputs
from ._distributed import collective
from ._pool_graph import PoolGraph

_MAX_NAME_BYTES = 255


def edge_weights(weights, n: int) -> np.ndarray:
    """``weights`` of ``add_dependencies`` as float64 ``(n,)``, NaN where the weight is the
    semiring's one: ``None``, one number for every edge, or ``n`` numbers (``None`` entries
    are the one). An explicit NaN is refused (it would read as "the one")."""
    _inputs.refuse_tracers("weights", weights)
    if weights is None:
        return np.full(n, np.nan)
    try:
        if isinstance(weights, (list, tuple)):
            w = np.array([np.nan if x is None else float(x) for x in weights], np.float64)
            explicit = np.array([x is not None for x in weights], bool)
        else:
            arr = np.asarray(weights)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"dtype {arr.dtype}")
            w = np.broadcast_to(arr.astype(np.float64), (n,)).copy() if arr.ndim == 0 else arr.astype(np.float64)
            explicit = np.ones(w.shape, bool)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"weights={weights!r} must be None, a number or {n} numbers ({e})") from None
    if w.shape != (n,):
        raise InvalidArgumentError(f"{n} edges need {n} weights, got weights of shape {w.shape}")
    bad = np.isnan(w) & explicit
    if bad.any():
        raise InvalidArgumentError(f"weights[{int(np.flatnonzero(bad)[0])}] is NaN; give None for the semiring's one")
    return w


def _one_weight(weight) -> float:
    """``add_dependency``'s ``weight``: one real number (NaN for ``None``: the semiring's one)."""
    _inputs.refuse_tracers("weight", weight)
    if weight is None:
        return float("nan")
    arr = np.asarray(weight) if not isinstance(weight, (str, bytes)) else None
    if arr is None or arr.ndim != 0 or arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"weight={weight!r} must be one real number or None (the semiring's one)")
    w = float(arr)
    if np.isnan(w):
        raise InvalidArgumentError(f"weight={weight!r} is NaN; give None for the semiring's one")
    return w


def refuse_unfit_weights(semiring, w: np.ndarray, dtype, parents, children, *, new: bool = True) -> None:
    """Refuse weights (float64, NaN: the semiring's one) that pages of ``dtype`` cannot hold
    by the weight rule (``semirings._carriers``): integer pages take integral weights in range
    (or the semiring's zero); float pages refuse a finite weight that would become infinite
    and (``new``) an infinite one that is not the semiring's zero.
    ``new`` (not a replayed or restored edge): also refuse a negative weight for a semiring
    defined on values >= 0 (logs and checkpoints written before that rule replay as written)."""
    dt = np.dtype(dtype)
    given = ~np.isnan(w)
    if not given.any() or not semiring.accepts(dt):
        return
    i = first_negative(semiring, w) if new else -1
    if i >= 0:
        shown = int(w[i]) if dt.kind in "iub" and float(w[i]).is_integer() else float(w[i])
        raise InvalidArgumentError(
            f"weight {shown!r} of dependency {int(parents[i])} -> {int(children[i])} is negative: semiring "
            f"{semiring.name!r} is defined on values >= 0")
    if dt.kind in "iu":
        bad = weights_to_carrier(semiring, np.where(given, w, 0.0), dt)[1] & given
        rule = f"{dt} pages take integral weights in the dtype's range (or the semiring's zero)"
    elif dt.kind == "f" or dt.name == "bfloat16":
        with np.errstate(over="ignore"):
            cast = np.where(given, w, 0.0).astype(dt).astype(np.float64)
        bad = given & np.isfinite(w) & ~np.isfinite(cast)
        rule = f"{dt} cannot represent it (it would become infinite)"
        zero = float(semiring.zero)
        inf = given & ~np.isfinite(w) & (w != zero) if new else np.zeros_like(given)
        if inf.any() and not bad[: int(np.flatnonzero(inf)[0])].any():
            bad = inf
            rule = (f"a weight must be finite on {dt} pages, or the semiring's zero ({zero}): under "
                    f"{semiring.name!r} an infinite weight turns the zeros it meets into NaN")
    else:
        return
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(
            f"weight {float(w[i])!r} of dependency {int(parents[i])} -> {int(children[i])} does not fit: {rule}")


def _id_array(x, what: str) -> np.ndarray:
    _inputs.refuse_tracers(what, x)
    if isinstance(x, (list, tuple)):
        x = [_inputs.page_id(v) for v in x]
    arr = np.asarray(x)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InvalidArgumentError(f"{what} must be a 1-D sequence of page ids, got {arr.dtype}{arr.shape}")
    return arr.astype(np.int64)


class Dependencies:
    """Mixin of :class:`MMSBState`: dependencies (one or many), derived pages, observers, propagation."""

    # ------------------------------------------------------------------ dependencies
    @collective("add_dependency")
    def add_dependency(self, parent, child, weight=None, edge_type: str = "data") -> int:
        """Make ``child`` depend on ``parent``; see :func:`mmsb_jax.add_dependency`."""
        with self._lock:
            self._check_open()
            pp, pool, sp = self._locate(parent)
            pc, pool_c, sc = self._locate(child)
            self._check_edge_pool(pool, pool_c, pp, pc, edge_type)
            w = _one_weight(weight)
            if edge_type == "data":
                refuse_unfit_weights(self.semiring, np.array([w]), pool.dtype, [pp], [pc], new=self._log is not None)
            pg = self._pool_graphs.get(pool.index)
            graph = pg.graph if pg is not None else ShadowPageGraph()
            self._check_not_derived(graph, pool, np.array([sc]), edge_type)
            try:
                graph.add_dependency(sp, sc, weight=None if np.isnan(w) else w, edge_type=edge_type)
            except GraphCycleError as e:
                raise self._cycle_in_pages(pool, e) from None
            if pg is None:
                pg = self._pool_graphs[pool.index] = PoolGraph(self.semiring, self._telemetry)
                pg.graph = graph
            self._epoch += 1
            self._log_record("log_add_dep", pp, pc, None if np.isnan(w) else w, edge_type)
            self._edges_changed(pool, pg, [sc])
            return self._epoch

    @collective("add_dependencies")
    def add_dependencies(self, parents, children, weights=None, edge_type: str = "data") -> int | None:
        """Add many dependencies in one epoch; see :func:`mmsb_jax.add_dependencies`."""
        with self._lock:
            self._check_open()
            pids, cids = _id_array(parents, "parents"), _id_array(children, "children")
            if pids.shape != cids.shape:
                raise InvalidArgumentError(f"parents and children differ in length ({pids.size} vs {cids.size})")
            w = edge_weights(weights, pids.size)
            return self._add_edges(pids, cids, w, edge_type)

    def _add_edges(self, pids: np.ndarray, cids: np.ndarray, w: np.ndarray, edge_type: str) -> int | None:
        """Add edges ``pids[i] -> cids[i]`` (NaN weight: the semiring's one) atomically: every
        check, and the cycle check of every pool, before anything changes."""
        if not isinstance(edge_type, str):
            raise InvalidArgumentError(f"edge_type={edge_type!r} must be a str")
        groups = self._edge_groups(pids, cids, edge_type)
        if not groups:
            return None  # checked, but no edge: no epoch
        staged = []
        for pool, sel, su, sv in groups:
            pg = self._pool_graphs.get(pool.index)
            graph = ShadowPageGraph() if pg is None else (pg.graph.copy() if len(groups) > 1 else pg.graph)
            self._check_not_derived(graph, pool, sv, edge_type)
            if edge_type == "data":
                refuse_unfit_weights(self.semiring, w[sel], pool.dtype, pids[sel], cids[sel], new=self._log is not None)
            try:
                graph.add_dependencies(su, sv, w[sel], edge_type=edge_type)  # atomic in one graph
            except GraphCycleError as e:
                raise self._cycle_in_pages(pool, e) from None
            staged.append((pool, pg, graph, sv))
        for pool, pg, graph, sv in staged:  # nothing can fail from here on
            if pg is None:
                pg = self._pool_graphs[pool.index] = PoolGraph(self.semiring, self._telemetry)
            pg.graph = graph
        self._epoch += 1
        self._log_record("log_add_deps", pids, cids, w, edge_type)
        for pool, _, _, sv in staged:
            self._edges_changed(pool, self._pool_graphs[pool.index], sv)
        return self._epoch

    def _edge_groups(self, pids, cids, edge_type) -> list:
        """Per pool: ``(pool, positions, parent slots, child slots)``; refuses unknown pages,
        pages of different pools and dtypes the semiring cannot carry."""
        t = self._table
        for what, ids in (("parents", pids), ("children", cids)):
            bad = (ids < 0) | (ids >= t.next_id)
            if not bad.any():
                bad = t.pool[ids] < 0
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise PageNotFoundError(int(ids[i]), f"{what}[{i}]={int(ids[i])} does not name a live page")
        ppool, cpool = t.pool[pids], t.pool[cids]
        if (ppool != cpool).any():
            i = int(np.flatnonzero(ppool != cpool)[0])
            self._check_edge_pool(self._pools[ppool[i]], self._pools[cpool[i]], int(pids[i]), int(cids[i]), edge_type)
        out = []
        for pi in np.unique(ppool).tolist():
            pool = self._pools[pi]
            sel = np.flatnonzero(ppool == pi)
            self._check_edge_pool(pool, pool, int(pids[sel[0]]), int(cids[sel[0]]), edge_type)
            out.append((pool, sel, t.slot[pids[sel]], t.slot[cids[sel]]))
        return out

    def _check_edge_pool(self, pool: PagePool, pool_c: PagePool, pp: int, pc: int, edge_type) -> None:
        if pool_c is not pool:
            raise InvalidArgumentError(
                f"page {pp} ({pool.dtype}{pool.shape} on {pool.location}) and page {pc} "
                f"({pool_c.dtype}{pool_c.shape} on {pool_c.location}) differ; dependencies link "
                f"pages of one shape, dtype and location"
            )
        if edge_type == "data" and not self.semiring.accepts(pool.dtype):
            raise InvalidArgumentError(
                f"the state's semiring {self.semiring.name!r} cannot propagate {pool.dtype} pages "
                f"(pages {pp} -> {pc}); use {self.semiring.dtype_kind} pages"
            )

    def _check_not_derived(self, graph: ShadowPageGraph, pool: PagePool, child_slots, edge_type) -> None:
        if edge_type != "data" or not graph.derived():
            return
        hit = np.isin(np.asarray(child_slots, np.int64), np.fromiter(graph.derived(), np.int64))
        if hit.any():
            pid = self._slot_owners(pool)[int(np.asarray(child_slots)[hit][0])]
            raise InvalidArgumentError(f"page {pid} is derived (see mmsb.derive); it takes no data dependencies")

    def _cycle_in_pages(self, pool: PagePool, e: GraphCycleError) -> GraphCycleError:
        owner = self._slot_owners(pool)
        return GraphCycleError([owner.get(n, n) for n in e.cycle])

    @collective("remove_dependency")
    def remove_dependency(self, parent, child) -> int:
        """Remove the dependency ``parent -> child``; see :func:`mmsb_jax.remove_dependency`."""
        with self._lock:
            self._check_open()
            pp, pool, sp = self._locate(parent)
            pc, pool_c, sc = self._locate(child)
            pg = self._pool_graphs.get(pool.index)
            if pool_c is not pool or pg is None or not pg.graph.has_edge(sp, sc):
                raise InvalidArgumentError(f"there is no dependency {pp} -> {pc} to remove")
            if pg.graph.edge_type(sp, sc) == "derive":
                raise InvalidArgumentError(f"{pp} -> {pc} is an input of derived page {pc}, not a dependency")
            pg.graph.remove_dependency(sp, sc)
            self._epoch += 1
            self._log_record("log_remove_dep", pp, pc)
            self._edges_changed(pool, pg, [sc])
            return self._epoch

    @collective("remove_dependencies")
    def remove_dependencies(self, parents, children) -> int | None:
        """Remove many dependencies in one epoch; see :func:`mmsb_jax.remove_dependencies`."""
        with self._lock:
            self._check_open()
            pids, cids = _id_array(parents, "parents"), _id_array(children, "children")
            if pids.shape != cids.shape:
                raise InvalidArgumentError(f"parents and children differ in length ({pids.size} vs {cids.size})")
            return self._remove_edges(pids, cids)

    def _remove_edges(self, pids: np.ndarray, cids: np.ndarray) -> int | None:
        groups = self._edge_groups(pids, cids, "control")  # any edge type: no dtype check
        if not groups:
            return None
        if len(set(zip(pids.tolist(), cids.tolist()))) != pids.size:
            raise InvalidArgumentError("the batch removes a dependency twice")
        for pool, sel, su, sv in groups:  # every edge exists before any is removed
            pg = self._pool_graphs.get(pool.index)
            for i, u, v in zip(sel.tolist(), su.tolist(), sv.tolist()):
                if pg is None or not pg.graph.has_edge(u, v) or pg.graph.edge_type(u, v) == "derive":
                    raise InvalidArgumentError(f"there is no dependency {int(pids[i])} -> {int(cids[i])} to remove")
        for pool, _, su, sv in groups:
            self._pool_graphs[pool.index].graph.remove_dependencies(su, sv)
        self._epoch += 1
        self._log_record("log_remove_deps", pids, cids)
        for pool, _, _, sv in groups:
            self._edges_changed(pool, self._pool_graphs[pool.index], sv)
        return self._epoch

    # ------------------------------------------------------------------ derived pages
    @collective("derive")
    def derive(self, child, fn, parents, *, name: str) -> int:
        """Make ``child`` computed from ``parents`` by ``fn``; see :func:`mmsb_jax.derive`."""
        with self._lock:
            self._check_open()
            if not isinstance(name, str) or not name or len(name.encode()) > _MAX_NAME_BYTES:
                raise InvalidArgumentError(f"name={name!r} must be a non-empty str of at most 255 bytes")
            if not callable(fn):
                raise InvalidArgumentError(f"fn={fn!r} is not callable")
            known = self._derive_fns.get(name)
            if known is not None and known is not fn:
                raise InvalidArgumentError(
                    f"name={name!r} already names another derive function ({known!r}); a name logs one function")
            pc, pool, sc = self._locate(child)
            if isinstance(parents, (int, np.integer)) or not hasattr(parents, "__len__"):
                raise InvalidArgumentError(f"parents={parents!r} must be a sequence of page ids")
            pids = _id_array(list(parents), "parents")
            if pids.size == 0:
                raise InvalidArgumentError("derive needs at least one parent")
            groups = self._edge_groups(pids, np.full(pids.size, pc), "control")
            _, _, sps, _ = groups[0]
            if not self.semiring.accepts(pool.dtype):  # the pool's propagation runs the semiring on its pages
                raise InvalidArgumentError(
                    f"the state's semiring {self.semiring.name!r} cannot propagate {pool.dtype} pages "
                    f"(derived page {pc}); use {self.semiring.dtype_kind} pages")
            check_derive_fn(name, fn, pids.size, pool)
            pg = self._pool_graphs.get(pool.index)
            graph = pg.graph if pg is not None else ShadowPageGraph()
            data = [p for p in graph.parents(sc) if graph.edge_type(p, sc) == "data"] if graph.has_node(sc) else []
            if data:
                owner = self._slot_owners(pool)
                raise InvalidArgumentError(f"page {pc} has data dependencies on {sorted(owner[p] for p in data)}; "
                                           "remove them before deriving it")
            try:
                graph.derive(sc, fn, sps.tolist())
            except GraphCycleError as e:
                raise self._cycle_in_pages(pool, e) from None
            if pg is None:
                pg = self._pool_graphs[pool.index] = PoolGraph(self.semiring, self._telemetry)
                pg.graph = graph
            pg.derive_names[sc] = name
            self._derive_fns[name] = fn
            self._epoch += 1
            self._log_record("log_derive", pc, name, pids)
            self._edges_changed(pool, pg, [sc])
            return self._epoch

    def derived(self) -> list[tuple[int, str, tuple[int, ...]]]:
        """Every derived page as ``(page, function name, parent pages)``, by page."""
        with self._lock:
            out = []
            for pi, pg in sorted(self._pool_graphs.items()):
                if not pg.derive_names:
                    continue
                owner = self._slot_owners(self._pools[pi])
                for slot, (_, parents) in pg.graph.derived().items():
                    out.append((owner[slot], pg.derive_names[slot], tuple(owner[p] for p in parents)))
            return sorted(out)

    def _edges_changed(self, pool: PagePool, pg: PoolGraph, child_slots) -> None:
        """After an edit: the children's values are recomputed when next read (or now, for
        observers of the pool's pages)."""
        pg.edited(child_slots)
        self._notify(pool)

    def dependencies(self, *, insertion_order: bool = False) -> list[tuple[int, int, float | None, str]]:
        """Every dependency as ``(parent, child, weight or None, edge_type)``, by parent then child
        (or, with ``insertion_order=True``, pool by pool in the order propagation sums them)."""
        with self._lock:
            out = []
            for pi, pg in sorted(self._pool_graphs.items()):
                owner = self._slot_owners(self._pools[pi])
                a = pg.graph.edge_arrays()
                for u, v, w, d, t in zip(a["src"].tolist(), a["dst"].tolist(), a["weight"].tolist(),
                                         a["default_weight"].tolist(), a["edge_type"].tolist()):
                    if t != "derive":  # a derived page's inputs: see derived()
                        out.append((owner[u], owner[v], None if d else w, str(t)))
            return out if insertion_order else sorted(out, key=lambda e: (e[0], e[1]))

    def _slot_owners(self, pool: PagePool) -> dict[int, int]:
        ids = self._table.ids_in_pool(pool.index)
        return dict(zip(self._table.slot[ids].tolist(), ids.tolist()))

    # ------------------------------------------------------------------ observers
    @collective("observe")
    def observe(self, page_id, callback) -> None:
        """Call ``callback(page_id, epoch)`` after each epoch in which the page's visible value
        changed (by a write to it, or by propagation into it): compared bit for bit with the
        value at the last call. Runs on the writing thread under the state's lock; it may read
        the state."""
        with self._lock:
            pid, pool, slot = self._locate(page_id)
            if not callable(callback):
                raise InvalidArgumentError(f"callback={callback!r} is not callable")
            self._observers.setdefault(pid, []).append(callback)
            self._observed[pid] = self._visible_bytes(pool, slot)

    def unobserve(self, page_id, callback) -> None:
        with self._lock:
            cbs = self._observers.get(int(page_id), [])
            if callback in cbs:
                cbs.remove(callback)
            if not cbs:
                self._observers.pop(int(page_id), None)
                self._observed.pop(int(page_id), None)

    def _visible_bytes(self, pool: PagePool, slot: int) -> bytes:
        return host_rows(self._visible_array(pool), [slot], pool.sharding)[0].tobytes()

    def _notify(self, pool: PagePool) -> None:
        """Fire the observers of ``pool``'s pages whose visible value changed since last time."""
        if not self._observers or self._log is None:  # none, or a replay in progress
            return
        for pid in sorted(self._observers):
            if self._table.pool[pid] != pool.index:
                continue
            now = self._visible_bytes(pool, int(self._table.slot[pid]))
            if now != self._observed.get(pid):
                self._observed[pid] = now
                for cb in list(self._observers[pid]):
                    cb(pid, self._epoch)

    # ------------------------------------------------------------------ hooks for layers above
    def _after_write(self, pool: PagePool, slots) -> None:
        """Propagate a write to ``slots`` of ``pool`` and tell the observers."""
        self._telemetry.count_writes(pool.index, slots)
        pg = self._pool_graphs.get(pool.index)
        if pg is not None and pg.has_edges:
            pg.refresh(pool.array, slots)
        self._notify(pool)


def check_derive_fn(name: str, fn, arity: int, pool: PagePool) -> None:
    """Refuse ``fn`` unless it takes ``arity`` pages of ``pool`` and returns one, also under
    ``jax.vmap`` (traced abstractly with ``jax.eval_shape``: nothing runs)."""
    try:
        inspect.signature(fn).bind(*range(arity))
    except TypeError as e:
        raise DeriveFunctionError(name, f"derive function {name!r} cannot take {arity} parent pages: {e}") from None
    except ValueError:  # no signature to read (a builtin): tracing below decides
        pass
    page = jax.ShapeDtypeStruct(pool.shape, pool.dtype)
    try:
        out = jax.eval_shape(fn, *([page] * arity))
    except Exception as e:  # noqa: BLE001 - whatever the user function raises while tracing
        raise DeriveFunctionError(name, f"derive function {name!r} fails on {arity} pages of "
                                        f"{pool.dtype}{pool.shape}: {type(e).__name__}: {e}") from None
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != pool.shape or out.dtype != pool.dtype:
        raise DeriveFunctionError(name, f"derive function {name!r} returns {out}, not a page of "
                                        f"{pool.dtype}{pool.shape}")
    rows = jax.ShapeDtypeStruct((2, *pool.shape), pool.dtype)
    try:  # propagation applies it to every derived page of a level at once, with jax.vmap
        jax.eval_shape(jax.vmap(fn), *([rows] * arity))
    except Exception as e:  # noqa: BLE001 - e.g. a pure_callback without a vmap_method
        raise DeriveFunctionError(name, f"derive function {name!r} works on one page but not under jax.vmap, "
                                        f"which propagation applies it with: {type(e).__name__}: {e}") from None
