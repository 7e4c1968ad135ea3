"""The compiled, static-shape form of a graph: :class:`CompiledGraph`, and :func:`with_weights`.

Layout (chosen by measurement, see ``benchmarks/bench_propagation.py``): nodes are renumbered
level by level ("internal rows"); every non-root row is computed by exactly one *step*. An ELL
step computes ``D`` consecutive rows of one level whose in-degree is at most ``k``: its
``k * D`` in-edges are stored as a ``(k, D)`` block (row ``j`` = the ``j``-th parent of each
node, padded with a zero-valued row), so a step is one gather, one ``⊗``, one ``⊕``-reduce
over the short axis and one contiguous write. No scatter is needed, which on CPU is 3-6x
faster than a segment reduction. ``(k, D)`` comes from a fixed ladder of classes, so the
number of distinct compiled programs stays small; a step picks its class with ``lax.switch``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from .._errors import InvalidArgumentError
from ..semirings import Semiring

Array = Any


@dataclasses.dataclass(frozen=True)
class CompiledGraph:
    """A :class:`ShadowPageGraph` compiled for one semiring: a registered pytree.

    Array fields are pytree leaves (so a ``CompiledGraph`` can be passed through ``jit``,
    ``vmap`` and ``lax.scan``); the rest is hashable static metadata. Sizes are padded to
    buckets, so editing a graph rarely changes the compiled program. Build one with
    :meth:`ShadowPageGraph.compile`.

    Leaves (``N = num_nodes``):
      perm: ``(N,)`` int32, internal row -> node id (rows are sorted by level).
      inv: ``(N,)`` int32, node id -> internal row.
      step_kind, step_eoff, step_noff: ``(K,)`` int32 per step: branch (0 = no-op, then one
        per ELL class, then one per derive group), offset into the edge/parent block, first
        internal row written.
      ell_src: ``(E_flat,)`` int32 internal row of each laid-out edge's source (padding: the
        zero row).
      ell_eidx: ``(E_flat,)`` int32 position of each laid-out edge in ``weights``.
      ell_weights: ``(E_flat, *w)`` the weights laid out (``weights[ell_eidx]``).
      der_par: ``(P,)`` int32 internal rows of derived nodes' parents, per derive step.
      weights: ``(W, *w)`` weights in :meth:`ShadowPageGraph.edges` order; entries past
        ``num_edges`` (and entries of non-data edges) are unused and hold the semiring's one.
      num_edges: ``()`` int32, the number of edges of the source graph.
      in_start, in_deg: ``(N,)`` int32, CSR by destination over data edges (node ids).
      in_src, in_wpos: ``(E_in,)`` int32, source node and position in ``weights``.
      in_weights: ``(E_in, *w)`` the weights in that order (``weights[in_wpos]``).
      out_start, out_deg: ``(N,)`` int32, CSR by source over data and derive edges.
      out_dst: ``(E_out,)`` int32 children.
      der_group: ``(N,)`` int32, derive group of each node (-1: not derived).
      der_row: ``(N,)`` int32, row of each derived node in its group's tables.
      der_nodes: per derive group ``(R_g,)`` int32 node ids (padding: ``N``).
      der_par_ext: per derive group ``(R_g, arity)`` int32 parent node ids.
      max_rounds: ``()`` int32, a bound on incremental rounds (depth of the DAG + 1).

    Static:
      semiring, num_nodes, classes (``((k, D), ...)``), derive_fns (``((fn, arity, rows),
      ...)``), d_max (rows written per step), k_in (in-edges read per node by incremental).
    """

    perm: Array
    inv: Array
    step_kind: Array
    step_eoff: Array
    step_noff: Array
    ell_src: Array
    ell_eidx: Array
    ell_weights: Array
    der_par: Array
    weights: Array
    num_edges: Array
    in_start: Array
    in_deg: Array
    in_src: Array
    in_wpos: Array
    in_weights: Array
    out_start: Array
    out_deg: Array
    out_dst: Array
    der_group: Array
    der_row: Array
    der_nodes: tuple
    der_par_ext: tuple
    max_rounds: Array
    semiring: Semiring = dataclasses.field(metadata=dict(static=True))
    num_nodes: int = dataclasses.field(metadata=dict(static=True))
    classes: tuple = dataclasses.field(metadata=dict(static=True))
    derive_fns: tuple = dataclasses.field(metadata=dict(static=True))
    d_max: int = dataclasses.field(metadata=dict(static=True))
    k_in: int = dataclasses.field(metadata=dict(static=True))

    @property
    def num_steps(self) -> int:
        return int(self.step_kind.shape[0])

    @property
    def num_rows(self) -> int:
        """Length of the internal value array: nodes, then ``d_max`` slack rows, then the zero row."""
        return self.num_nodes + self.d_max + 1

    def replace(self, **changes) -> "CompiledGraph":
        return dataclasses.replace(self, **changes)


_STATIC = [f.name for f in dataclasses.fields(CompiledGraph) if f.metadata.get("static")]
_DATA = [f.name for f in dataclasses.fields(CompiledGraph) if not f.metadata.get("static")]
jax.tree_util.register_dataclass(CompiledGraph, data_fields=_DATA, meta_fields=_STATIC)


def weight_dtype(semiring: Semiring):
    return jnp.bool_ if semiring.dtype_kind == "bool" else jnp.float32


def with_weights(cg: CompiledGraph, w) -> CompiledGraph:
    """A copy of ``cg`` with new edge weights; ``jax.grad`` flows through ``w``.

    Args:
      cg: a compiled graph.
      w: ``(num_edges,)`` weights in :meth:`ShadowPageGraph.edges` order (entries of
        non-data edges are ignored), or ``(num_edges, *s)`` with ``s`` broadcastable against
        the page shape (same number of dimensions) for per-element weights.

    Raises:
      InvalidArgumentError: ``w`` has the wrong length or dtype kind.

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
    e = w.shape[0]
    try:
        expected = int(cg.num_edges)
    except (jax.errors.ConcretizationTypeError, TypeError):
        expected = None  # traced graph: only the capacity can be checked
    if (expected is not None and e != expected) or e >= cap:
        raise InvalidArgumentError(
            f"w must have one entry per edge of the graph (g.edges() order): got {w.shape=}, "
            f"expected num_edges={expected}"
        )
    tail = jnp.full((cap - e,) + w.shape[1:], sr.one, w.dtype)
    weights = jnp.concatenate([w, tail], axis=0)
    return cg.replace(weights=weights, ell_weights=weights[cg.ell_eidx], in_weights=weights[cg.in_wpos])
