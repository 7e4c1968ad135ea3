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


def enable_x64():
    """A context manager that turns on 64-bit mode (float64 / int64 arrays) inside it.

    ``jax.enable_x64(True)`` on jax 0.10+ (where ``jax.experimental.enable_x64`` is gone),
    ``jax.experimental.enable_x64()`` before.
    """
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as _enable_x64  # pragma: no cover - older jax

    return _enable_x64()
