"""Layers 3-4: the ShadowPageGraph builder, its compiled form, and propagation.

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
  >>> x2, changed = propagate_incremental(cg, x, b.at[0].set(5.0), jnp.array([True, False, False]))
  >>> x2.tolist(), changed.tolist()
  ([5.0, 6.0, 7.0], [True, True, True])
"""

from ._builder import EDGE_TYPES as EDGE_TYPES, ShadowPageGraph as ShadowPageGraph
from ._compile import compile_graph as compile_graph
from ._compiled import CompiledGraph as CompiledGraph, with_weights as with_weights
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
]
