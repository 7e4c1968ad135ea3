"""What differs between the jax versions this package runs on (0.10 here, 0.11 on the GPU
machine), kept in one place."""

from __future__ import annotations

try:  # public in jax 0.10; keep working if it moves
    from jax.core import Tracer as _Tracer
except ImportError:  # pragma: no cover
    from jax._src.core import Tracer as _Tracer


def is_tracer(x) -> bool:
    """Whether ``x`` is traced (inside ``jit``/``vmap``/``grad``), not a concrete value."""
    return isinstance(x, _Tracer)
