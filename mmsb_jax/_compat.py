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


# --------------------------------------------------------------------------- multi-process JAX
import jax.errors as _jax_errors  # noqa: E402

#: What a failed XLA runtime call raises (a collective whose peer left, a coordination-service
#: timeout): ``jax.errors.JaxRuntimeError`` in jax 0.10 and 0.11.
RuntimeFailure = getattr(_jax_errors, "JaxRuntimeError", None)
if RuntimeFailure is None:  # pragma: no cover - older jaxlib
    from jaxlib.xla_extension import XlaRuntimeError as RuntimeFailure


def distributed_client():
    """The client of JAX's multi-controller runtime (``jax.distributed.initialize``), or ``None``.

    Its key-value store and barriers (the coordination service in process 0) are what
    ``jax.experimental.multihost_utils`` and orbax synchronise with; jax has no public name
    for it (0.10 and 0.11 keep it in ``jax._src.distributed.global_state``)."""
    from jax._src import distributed

    return getattr(distributed.global_state, "client", None)


def use_cpu_collectives(implementation: str = "gloo") -> None:
    """Let CPU devices of several processes run collectives (must precede the first backend
    use). jax 0.10 and 0.11 name the option ``jax_cpu_collectives_implementation`` (gloo is
    their default); older versions had ``jax_cpu_enable_gloo_collectives``."""
    import jax

    if "jax_cpu_collectives_implementation" in jax.config.values:
        jax.config.update("jax_cpu_collectives_implementation", implementation)
    elif implementation == "gloo":  # pragma: no cover - jax < 0.4.36
        jax.config.update("jax_cpu_enable_gloo_collectives", True)
    else:  # pragma: no cover
        raise ValueError(f"this jax has no CPU collectives {implementation!r}")


def initialize_distributed(**kwargs) -> None:
    """``jax.distributed.initialize(**kwargs)``, leaving out the keywords this jax does not
    take (the timeout names have moved between versions)."""
    import inspect

    import jax

    params = inspect.signature(jax.distributed.initialize).parameters
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if k in params and v is not None})
