"""Layer 1 (page): deltas, their merge, the deterministic router, the in-jit delta ring, and
the jitted arena operations of a pool (one device or sharded), and the in-jit tree ring.

Everything here is pure and works under ``jit`` / ``vmap``, except the host-side helpers
the shell uses to resolve last writers and read a drained ring. May import:
``mmsb_jax._errors``, ``mmsb_jax._compat``, ``mmsb_jax.semirings``, ``mmsb_jax.pages``.
"""

from ._delta import (
    AccumulateDelta as AccumulateDelta,
    Delta as Delta,
    DenseDelta as DenseDelta,
    SparseDelta as SparseDelta,
    accumulate_delta as accumulate_delta,
    apply_delta as apply_delta,
    bit_equal as bit_equal,
    dense_delta as dense_delta,
    diff_delta as diff_delta,
    merge_deltas as merge_deltas,
    sparse_delta as sparse_delta,
)
from ._ring import DeltaRing as DeltaRing, delta_ring as delta_ring, ring_append as ring_append
from ._router import route_pool as route_pool, route_sparse as route_sparse
from ._tree_ring import TreeRing as TreeRing, record_tree as record_tree
