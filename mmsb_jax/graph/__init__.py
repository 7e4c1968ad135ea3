"""Layers 3-4: the ShadowPageGraph builder, its compiled form, and propagation.

A :class:`ShadowPageGraph` is a mutable DAG of page dependencies; :meth:`~ShadowPageGraph.compile`
lays it out as a static-shape :class:`CompiledGraph` (sized in buckets, so edits inside a
bucket reuse every jitted program); :func:`propagate` solves ``x = b ⊕ (Aᵀ ⊗ x)`` in one
topological pass and :func:`propagate_incremental` recomputes only a dirty cone. Pages may
have any dtype the semiring accepts.

This layer imports ``mmsb_jax.semirings``, ``mmsb_jax._errors`` and ``mmsb_jax._compat``.

Example:
  >>> import jax.numpy as jnp
  >>> from mmsb_jax import semirings
  >>> from mmsb_jax.graph import ShadowPageGraph, propagate, propagate_incremental
  >>> g = ShadowPageGraph()
  >>> g.add_dependencies([0, 0, 1], [1, 2, 2], [1.0, 4.0, 1.0])
  >>> cg = g.compile(semirings.TROPICAL, num_nodes=3)
  >>> b = jnp.array([0.0, jnp.inf, jnp.inf])
  >>> x = propagate(cg, b)
  >>> x.tolist()
  [0.0, 1.0, 2.0]
  >>> x2, changed = propagate_incremental(cg, x, b.at[0].set(5.0), jnp.array([0]))
  >>> x2.tolist(), changed.tolist()
  ([5.0, 6.0, 7.0], [True, True, True])
"""

from ._builder import EDGE_TYPES as EDGE_TYPES, ShadowPageGraph as ShadowPageGraph
from ._compile import compile_graph as compile_graph
from ._compiled import CompiledGraph as CompiledGraph, with_weights as with_weights
from ._generators import chain as chain, deep_dag as deep_dag, power_law_dag as power_law_dag, random_dag as random_dag
from ._incremental import propagate_incremental as propagate_incremental
from ._propagate import propagate as propagate

__all__ = [
    "ShadowPageGraph",
    "CompiledGraph",
    "EDGE_TYPES",
    "compile_graph",
    "propagate",
    "propagate_incremental",
    "with_weights",
    "chain",
    "deep_dag",
    "power_law_dag",
    "random_dag",
]
