"""The few backend-specific Pallas details, kept in one place (jax 0.10 / 0.11).

The kernels in this package use a small, stable slice of Pallas: ``pl.pallas_call`` with a
``grid``, whole-array refs (``pl.no_block_spec``), ``pl.program_id``, masked loads and stores
through ``ref.at[...]`` views, ``lax.fori_loop`` and elementwise ``jnp``. That slice runs

* everywhere with ``interpret=True`` (the HLO interpreter: CPU tests), and
* on NVIDIA GPUs through the Triton lowering, which this module selects explicitly by passing
  ``jax.experimental.pallas.triton.CompilerParams``. (On jax >= 0.10 a bare ``pallas_call``
  on GPU goes to Mosaic GPU, whose TMA/warpgroup model has no masked vector gather/scatter;
  the Triton lowering is deprecated on 0.11 but present. If a later jax removes it,
  :func:`mmsb_jax.adaptive.gpu_lowering` returns ``None`` and the policy falls back to XLA.)

Masked ``load``/``store`` come from ``jax.experimental.pallas.triton`` (``pl.load``/``pl.store``
were removed after 0.7); where that module is missing the same primitives are taken from
``jax._src.pallas.primitives`` so interpret mode keeps working.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from mmsb_jax._errors import InvalidArgumentError

try:  # the Triton lowering and its masked load/store (deprecated on jax 0.11, still there)
    from jax.experimental.pallas import triton as _plt

    _load = _plt.load
    _store = _plt.store
    TRITON_AVAILABLE = True
except ImportError:  # pragma: no cover - a jax without the Triton backend
    _plt = None
    TRITON_AVAILABLE = False
    from jax._src.pallas import primitives as _prims

    def _load(ref, *, mask=None, other=None):
        return _prims.load(ref, None, mask=mask, other=other)

    def _store(ref, val, *, mask=None):
        return _prims.store(ref, None, val, mask=mask)


def load(ref_view, *, mask=None, other=None):
    """``ref_view[...]`` where ``mask``; ``other`` elsewhere (no memory access there on GPU)."""
    return _load(ref_view, mask=mask, other=other)


def store(ref_view, value, *, mask=None):
    """``ref_view[...] = value`` where ``mask`` (masked-out lanes are not written)."""
    _store(ref_view, value, mask=mask)


def compiler_params(*, num_warps: int | None = None, num_stages: int | None = None):
    """Backend parameters for a compiled (non-interpret) ``pallas_call``; ``None`` = defaults."""
    if _plt is None:  # pragma: no cover
        return None
    return _plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def pallas_call(kernel, *, out_shape, grid, interpret: bool, name: str, num_warps: int | None = None,
                num_stages: int | None = None, input_output_aliases=None):
    """``pl.pallas_call`` over whole-array refs (no ``in_specs``/``out_specs``: the default is
    the whole array); backend parameters only when compiled."""
    kwargs = {}
    if not interpret:
        kwargs["compiler_params"] = compiler_params(num_warps=num_warps, num_stages=num_stages)
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        input_output_aliases=dict(input_output_aliases or {}),
        interpret=interpret,
        name=name,
        **kwargs,
    )


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= max(n, 1)``."""
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()


def check_pow2(name: str, value: int) -> int:
    value = int(value)
    if value < 1 or value & (value - 1):
        raise InvalidArgumentError(f"{name} must be a power of two >= 1 (GPU blocks are), got {name}={value}")
    return value


def concrete_numpy(x):
    """``x`` as a numpy array, or ``None`` when it is traced (inside ``jit``/``grad``)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def store_index(interpret: bool, ok, index: tuple, bounds: tuple) -> tuple:
    """The index tuple for a masked store.

    Compiled, masked-out lanes touch no memory, so the raw indices are kept (that preserves
    Triton's contiguity analysis). The interpreter instead writes every lane (the old value
    where masked), so there masked lanes are sent out of bounds, where its scatter drops them:
    they can then never collide with a real write.
    """
    if not interpret:
        return index
    return tuple(jnp.where(ok, jnp.broadcast_to(i, ok.shape), b) for i, b in zip(index, bounds))
