"""The compiled, static-shape form of a graph: :class:`CompiledGraph`, and :func:`with_weights`.

The layout (internal rows, uniform steps, chunked in-edges) is described in :mod:`._plan`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._compat import is_tracer
from .._errors import InvalidArgumentError
from ..semirings import Semiring
from ..semirings._carriers import CHECKED_DTYPES, first_misfit

Array = Any

#: ``weight_fit`` entry of weights that were never checked (``with_weights`` under a trace).
UNCHECKED = -2


@dataclasses.dataclass(frozen=True)
class CompiledGraph:
    """A :class:`ShadowPageGraph` compiled for one semiring: a registered pytree.

    Array fields are pytree leaves (so a ``CompiledGraph`` can be passed through ``jit``,
    ``vmap`` and ``lax.scan``); the rest is hashable static metadata. Every shape and every
    static field but ``num_edges`` is a function of bucketed sizes (nodes, edges, steps,
    in-degree), so an edit inside a bucket gives a graph that reuses every compiled program
    (:func:`propagate` and :func:`propagate_incremental` leave ``num_edges`` out of their
    jitted programs). Build one with :meth:`ShadowPageGraph.compile`.

    Leaves (``N = num_nodes``, ``R = rows``, ``K = width``):
      perm: ``(N,)`` int32, internal row -> node id (rows are sorted by level).
      inv: ``(N,)`` int32, node id -> internal row.
      step_row0, step_count, step_kind, step_poff: ``(S,)`` int32 per step: first internal
        row written, rows written, kind (0: reduce; ``1 + g``: derive group ``g``) and offset
        into ``der_par``. Padding steps write nothing.
      ell_src: ``(S, K, R)`` int32 internal row of each edge slot's source (padding: the
        zero row ``N + R``).
      ell_pos: ``(S, K, R)`` int32 position of each slot's edge in ``weights``.
      ell_weights: ``(S, K, R, *w)`` the weights laid out (``weights[ell_pos]``).
      der_par: ``(P,)`` int32 internal rows of derived nodes' parents, per derive step.
      weights: ``(W, *w)`` weights in :meth:`ShadowPageGraph.edges` order; entries past
        ``num_edges`` (and entries of non-data edges) are unused and hold the semiring's one.
      weight_fit: ``(10,)`` int32, per dtype of ``semirings._carriers.CHECKED_DTYPES`` (bool,
        the integers, float64): the position of the first weight that does not fit pages of
        that dtype, ``-1`` when all fit, ``-2`` when unchecked (weights given under a trace).
      in_start, in_rows: ``(N + 1,)`` int32, each node's first row in the in-edge table and
        its number of rows (0 for roots and derived nodes; entry ``N`` is padding).
      in_src, in_pos: ``(C * in_width,)`` int32, the in-edge table: rows of ``in_width``
        slots, node-major, edges in insertion order: source node (padding: ``N``), position
        in ``weights``.
      in_weights: ``(C * in_width, *w)`` the weights in that order.
      out_start, out_rows: ``(N + 1,)`` int32, the same for the child table (data and
        derive edges).
      out_dst: ``(C_out * out_width,)`` int32 children (padding: ``N``).
      der_group: ``(N,)`` int32, derive group of each node (-1: not derived).
      der_row: ``(N,)`` int32, row of each derived node in its group's tables.
      der_nodes: per derive group ``(R_g,)`` int32 node ids (padding: ``N``).
      der_par_ext: per derive group ``(R_g, arity)`` int32 parent node ids.
      max_rounds: ``()`` int32, a bound on incremental rounds (depth of the DAG + 2).

    Static:
      semiring; num_nodes; rows (``R``: rows per step); width (``K``: edge slots per row);
      in_width / out_width (slots per row of the in-edge / child tables); in_hub_rows /
      out_hub_rows (rows an incremental round reads for one node, at most 4: nodes with more
      take the full-pass fallback); derive_fns (``((fn, arity), ...)`` per group);
      hub_chunks (chunks per hub of a hub step, step kind ``1 + len(derive_fns)``; 0: none);
      num_edges (live edges of the source graph: the length :func:`with_weights` checks, at
      trace time).
    """

    perm: Array
    inv: Array
    step_row0: Array
    step_count: Array
    step_kind: Array
    step_poff: Array
    ell_src: Array
    ell_pos: Array
    ell_weights: Array
    der_par: Array
    weights: Array
    weight_fit: Array
    in_start: Array
    in_rows: Array
    in_src: Array
    in_pos: Array
    in_weights: Array
    out_start: Array
    out_rows: Array
    out_dst: Array
    der_group: Array
    der_row: Array
    der_nodes: tuple
    der_par_ext: tuple
    max_rounds: Array
    semiring: Semiring = dataclasses.field(metadata=dict(static=True))
    num_nodes: int = dataclasses.field(metadata=dict(static=True))
    rows: int = dataclasses.field(metadata=dict(static=True))
    width: int = dataclasses.field(metadata=dict(static=True))
    in_width: int = dataclasses.field(metadata=dict(static=True))
    in_hub_rows: int = dataclasses.field(metadata=dict(static=True))
    out_width: int = dataclasses.field(metadata=dict(static=True))
    out_hub_rows: int = dataclasses.field(metadata=dict(static=True))
    derive_fns: tuple = dataclasses.field(metadata=dict(static=True))
    hub_chunks: int = dataclasses.field(metadata=dict(static=True))
    num_edges: int = dataclasses.field(metadata=dict(static=True))

    @property
    def num_steps(self) -> int:
        """Steps of the program (padding included)."""
        return int(self.step_row0.shape[0])

    @property
    def num_rows(self) -> int:
        """Length of the internal value array: nodes, then ``rows`` slack rows, then the zero row."""
        return self.num_nodes + self.rows + 1

    @property
    def in_pad_row(self) -> int:
        """A row of the in-edge table that is all padding (the last)."""
        return int(self.in_src.shape[0]) // self.in_width - 1

    @property
    def out_pad_row(self) -> int:
        """A row of the child table that is all padding (the last)."""
        return int(self.out_dst.shape[0]) // self.out_width - 1

    @property
    def buckets(self) -> dict:
        """The bucketed sizes that key the jitted programs (equal buckets: no recompile)."""
        return {
            "nodes": self.num_nodes,
            "steps": self.num_steps,
            "block": (self.width, self.rows),
            "in_table": (self.in_pad_row + 1, self.in_width, self.in_hub_rows),
            "out_table": (self.out_pad_row + 1, self.out_width, self.out_hub_rows),
            "weights": int(self.weights.shape[0]),
            "derive": tuple((int(a.shape[0]), int(p.shape[-1])) for a, p in zip(self.der_nodes, self.der_par_ext)),
        }

    def replace(self, **changes) -> "CompiledGraph":
        return dataclasses.replace(self, **changes)

    def program_key(self) -> "CompiledGraph":
        """This graph without ``num_edges``: what the jitted programs are traced with, so
        that graphs of equal buckets share one program (memoized on the instance)."""
        key = self.__dict__.get("_program_key")
        if key is None:
            key = self if self.num_edges == -1 else dataclasses.replace(self, num_edges=-1)
            object.__setattr__(self, "_program_key", key)
        return key


_STATIC = [f.name for f in dataclasses.fields(CompiledGraph) if f.metadata.get("static")]
_DATA = [f.name for f in dataclasses.fields(CompiledGraph) if not f.metadata.get("static")]
jax.tree_util.register_dataclass(CompiledGraph, data_fields=_DATA, meta_fields=_STATIC)


def check_weight_fit(cg: CompiledGraph, dtype) -> None:
    """Raise if ``cg``'s weights do not fit pages of ``dtype`` (a no-op under a trace).

    Raises:
      InvalidArgumentError: names the first weight that does not fit, and the rule.
    """
    dt = np.dtype(dtype)
    if dt not in CHECKED_DTYPES or is_tracer(cg.weight_fit):
        return
    pos = int(np.asarray(cg.weight_fit)[CHECKED_DTYPES.index(dt)])
    if pos < 0:
        return
    w = np.asarray(cg.weights[pos]).reshape(-1)[0]
    if dt == np.float64:
        why = (
            "the graph was compiled without 64-bit mode, so its weights were stored as float32 "
            "(compile in 64-bit mode, with jax.enable_x64(True), or with dtype=float64)"
        )
    else:
        why = "integer pages need integral weights representable in the page dtype (or the semiring's zero)"
    raise InvalidArgumentError(
        f"edge #{pos} (in g.edges() order) has weight {float(w)!r}, which does not fit {dt} pages under "
        f"semiring {cg.semiring.name!r}: {why}"
    )


def with_weights(cg: CompiledGraph, w) -> CompiledGraph:
    """A copy of ``cg`` with new edge weights; ``jax.grad`` flows through ``w``.

    The weights reach the pages by the rule of :meth:`ShadowPageGraph.compile` (cast to the
    page dtype; on integer pages checked to be integral and in range when ``w`` is concrete,
    truncated toward zero without a check when it is traced).

    Args:
      cg: a compiled graph.
      w: ``(num_edges,)`` weights in :meth:`ShadowPageGraph.edges` order (entries of
        non-data edges are ignored), or ``(num_edges, *s)`` with ``s`` broadcastable against
        the page shape (same number of dimensions) for per-element weights. Floating weights
        (bool for BOOLEAN).

    Raises:
      InvalidArgumentError: ``w`` has the wrong length or dtype kind. The length is checked
        at trace time too (``num_edges`` is static), so a short ``w`` never reaches ``jit``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> from mmsb_jax.graph import ShadowPageGraph, propagate, with_weights
      >>> g = ShadowPageGraph(); g.add_dependency(0, 1, weight=2.0)
      >>> cg = g.compile(semirings.REAL, num_nodes=2)
      >>> f = lambda w: propagate(with_weights(cg, w), jnp.array([3.0, 0.0]))[1]
      >>> float(jax.grad(f)(jnp.array([2.0]))[0])
      3.0
    """
    w = jnp.asarray(w)
    sr = cg.semiring
    if w.ndim < 1:
        raise InvalidArgumentError(f"w must have a leading edge axis, got {w.shape=}")
    if sr.dtype_kind == "bool":
        if w.dtype != jnp.bool_:
            raise InvalidArgumentError(f"semiring {sr.name} needs bool weights, got {w.dtype=}")
    elif not jnp.issubdtype(w.dtype, jnp.floating):
        raise InvalidArgumentError(f"semiring {sr.name} needs floating weights, got {w.dtype=}")
    cap = cg.weights.shape[0]
    if w.shape[0] != cg.num_edges or w.shape[0] >= cap:
        raise InvalidArgumentError(
            f"w must have one entry per edge of the graph (g.edges() order): got {w.shape=}, "
            f"expected num_edges={cg.num_edges}"
        )
    tail = jnp.full((cap - w.shape[0],) + w.shape[1:], sr.one_for(w.dtype), w.dtype)
    weights = jnp.concatenate([w, tail], axis=0)
    if is_tracer(w):
        fit = jnp.full(len(CHECKED_DTYPES), UNCHECKED, jnp.int32)
    else:
        flat = np.asarray(w, np.float64).reshape(w.shape[0], -1)
        fit = first_misfit(sr, flat[:, 0] if flat.shape[1] else np.zeros(0))
        if flat.shape[1] > 1:  # per-element weights: every column counts
            fits = np.stack([first_misfit(sr, flat[:, j]) for j in range(flat.shape[1])])
            fit = np.where((fits >= 0).any(axis=0), np.where(fits >= 0, fits, np.iinfo(np.int32).max).min(axis=0), -1)
        fit = jnp.asarray(fit, jnp.int32)
    return cg.replace(
        weights=weights, weight_fit=fit,
        ell_weights=weights[cg.ell_pos], in_weights=weights[cg.in_pos],
    )
