"""Bulk edits of a :class:`~mmsb_jax.graph.ShadowPageGraph`: many edges added or removed at
once, with one O(V + E) acyclicity check (a level-synchronous Kahn pass) for the batch."""

from __future__ import annotations

import numpy as np

from .._errors import GraphCycleError, InvalidArgumentError
from . import _topo
from ._edges import _MAX_ID, DATA, DERIVE, _type_code


class BulkEdits:
    """Mixin of :class:`~mmsb_jax.graph.ShadowPageGraph`: ``add_dependencies``,
    ``remove_dependencies``."""

    def add_dependencies(self, us, vs, ws=None, edge_type: str = "data") -> None:
        """Add many edges at once; one O(V + E) acyclicity check for the whole batch.

        Args:
          us, vs: int arrays (or sequences) of sources and destinations.
          ws: ``None`` (all weights = the semiring's one), a scalar, or an array of weights
            (NaN entries mean the semiring's one).
          edge_type: one type for the whole batch.

        A pair repeated in the batch, or already in the graph, is re-weighted in place (last
        weight wins), as by repeated :meth:`add_dependency`.

        Raises:
          GraphCycleError: the batch would close a cycle; no edge of the batch is added.
        """
        us = np.asarray(us)
        vs = np.asarray(vs)
        if us.shape != vs.shape or us.ndim != 1:
            raise InvalidArgumentError(f"us and vs must be 1-D of equal length, got {us.shape=} {vs.shape=}")
        n = us.size
        if n == 0:
            return
        for name, a in (("us", us), ("vs", vs)):
            if not np.issubdtype(a.dtype, np.integer):
                raise InvalidArgumentError(f"{name} must hold int node ids, got dtype {a.dtype}")
            if a.min() < 0 or a.max() > _MAX_ID:
                bad = a[(a < 0) | (a > _MAX_ID)][0]
                raise InvalidArgumentError(f"{name} holds node id {int(bad)} outside [0, 2**31)")
        us = us.astype(np.int64)
        vs = vs.astype(np.int64)
        if ws is None:
            w = np.full(n, np.nan)
        else:
            try:
                w = np.asarray(ws, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"ws must be None, a number or {n} numbers: {e}") from None
            if w.ndim == 0:
                w = np.full(n, float(w))
            elif w.shape != (n,):
                raise InvalidArgumentError(f"{n} edges need {n} weights (or one scalar for all), got ws of shape {w.shape}")
            else:
                w = w.copy()
        wdef = np.isnan(w)
        code = _type_code(edge_type)
        loops = us == vs
        if loops.any():
            u0 = int(us[loops][0])
            raise GraphCycleError([u0, u0])
        if code == DATA and self._derived:
            bad = np.isin(vs, np.fromiter(self._derived, np.int64))
            if bad.any():
                raise InvalidArgumentError(f"node v={int(vs[bad][0])} is derived; it takes no data edges")
        keys = us << 32 | vs
        # dedup within the batch: position of the first occurrence, weight of the last
        rk = keys[::-1]
        uk, last_rev = np.unique(rk, return_index=True)
        last = n - 1 - last_rev
        _, first = np.unique(keys, return_index=True)
        # existing live edges
        m = self._alive[: self._n]
        ekeys = self._src[: self._n][m] << 32 | self._dst[: self._n][m]
        eslots = np.flatnonzero(m)
        o = np.argsort(ekeys, kind="stable")
        ekeys_s, eslots_s = ekeys[o], eslots[o]
        pos = np.searchsorted(ekeys_s, uk)
        pos_c = np.minimum(pos, max(ekeys_s.size - 1, 0))
        exists = ekeys_s[pos_c] == uk if ekeys_s.size else np.zeros(uk.size, bool)
        if exists.any():
            ex_slots = eslots_s[pos_c[exists]]
            if (self._type[ex_slots] == DERIVE).any():
                raise InvalidArgumentError("the batch re-adds a derive edge; use derive()")
        new = ~exists
        order_new = np.argsort(first[new], kind="stable")
        new_first = first[new][order_new]  # first positions of new pairs, in batch order
        new_last = last[new][order_new]  # ... and of their last occurrence (the weight kept)
        new_src, new_dst = us[new_first], vs[new_first]
        if new_src.size:
            self._bulk_check(new_src, new_dst)  # raises on a cycle, graph untouched
        if exists.any():
            ex_slots = eslots_s[pos_c[exists]]
            li = last[exists]
            self._w[ex_slots], self._wdef[ex_slots], self._type[ex_slots] = w[li], wdef[li], code
        if new_src.size:
            self._append(new_src, new_dst, w[new_last], wdef[new_last], np.full(new_src.size, code, np.uint8))
            self._index = None
            self._children = self._parents = None
        self._version += 1

    def remove_dependencies(self, us, vs) -> None:
        """Remove many edges at once (the nodes stay); all or nothing.

        Raises:
          InvalidArgumentError: an edge of the batch is not in the graph (or is a derive edge,
            or is repeated); no edge is removed.
        """
        us, vs = np.asarray(us), np.asarray(vs)
        if us.shape != vs.shape or us.ndim != 1:
            raise InvalidArgumentError(f"us and vs must be 1-D of equal length, got {us.shape=} {vs.shape=}")
        pairs = list(zip(us.tolist(), vs.tolist()))
        if len(set(pairs)) != len(pairs):
            raise InvalidArgumentError("the batch removes an edge twice")
        slots = [self._slot(u, v) for u, v in pairs]  # raises before anything is removed
        for (u, v), slot in zip(pairs, slots):
            if self._type[slot] == DERIVE:
                raise InvalidArgumentError(f"edge ({u}, {v}) is a derive edge; use underive({v})")
        for (u, v), slot in zip(pairs, slots):
            self._remove_slot(u, v, slot)
        self._maybe_compact()

    def _bulk_check(self, new_src, new_dst) -> None:
        m = self._alive[: self._n]
        src = np.concatenate([self._src[: self._n][m], new_src])
        dst = np.concatenate([self._dst[: self._n][m], new_dst])
        self._ord = _topo.bulk_order(self.node_ids(), src, dst)  # raises GraphCycleError
        self._lo, self._hi = 0, len(self._ord) - 1
