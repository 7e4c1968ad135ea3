"""Moving arrays bit for bit: bfloat16 as uint16 through scatters, gathers and slices.

XLA:CPU's bfloat16 data movement (scatter, gather, dynamic-update-slice) quiets a NaN's
payload (``0x7fc1`` became ``0x7fc0``, the signalling ``0x7f81`` too); float16, float32 and
every other dtype keep their bits. Pools, rings and deltas move bfloat16 as its uint16 bits
(bitcasts are free: the same bytes, no copy), so a page holds exactly what was written.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = Any


def moved(x: Array) -> Array:
    """``x`` as a scatter, gather or dynamic-update-slice moves it bit for bit: bfloat16 as
    uint16, any other dtype as it is. :func:`unmoved` turns the result back.

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> x = jnp.asarray(np.array([0x7FC1], np.uint16).view(jnp.bfloat16))
      >>> z = unmoved(moved(jnp.zeros(2, jnp.bfloat16)).at[1].set(moved(x)[0]), jnp.bfloat16)
      >>> [hex(v) for v in np.asarray(z).view(np.uint16)]
      ['0x0', '0x7fc1']
    """
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def unmoved(u: Array, dtype) -> Array:
    """The ``dtype`` array that :func:`moved` turned ``u`` from."""
    if jnp.dtype(dtype) == jnp.bfloat16 and u.dtype == jnp.uint16:
        return jax.lax.bitcast_convert_type(u, jnp.bfloat16)
    return u
