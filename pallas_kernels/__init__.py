"""Pallas kernels for mmsb_jax's hot merges, each beside its pure-jnp reference.

* :mod:`pallas_kernels.scatter_merge` — fused gather -> merge -> scatter of dense, sparse,
  accumulate and overwrite delta rows into pool slots (one pass, in place).
* :mod:`pallas_kernels.segment_reduce` — segmented semiring reduction, plain and fused with
  propagation's gather and ⊗ (CSR by destination).

The policy choosing a kernel or the XLA path (``use_pallas``, ``set_backend``,
``MMSB_KERNELS``, ``backend_report``) lives in :mod:`mmsb_jax.adaptive`.

Import the ops from their modules (as with jax's own Pallas ops; the modules share their
main function's name, so the package does not re-export those)::

    from pallas_kernels.scatter_merge import scatter_merge, scatter_merge_xla
    from pallas_kernels.segment_reduce import gather_segment_reduce_csr

Every kernel runs anywhere with ``interpret=True``; compiled, it targets NVIDIA GPUs through
Pallas' Triton lowering. This package depends on ``mmsb_jax.semirings`` and ``mmsb_jax._errors`` only
(bad arguments raise ``InvalidArgumentError``, an ``MMSBError`` and a ``ValueError``; the shell
imports it lazily, when the policy picks a kernel).
"""

from . import scatter_merge as scatter_merge
from . import segment_reduce as segment_reduce

__all__ = ["scatter_merge", "segment_reduce"]
