"""Root pytest configuration (tests and docstring examples alike): 8 virtual CPU devices and
strict dtype/rank promotion, set before jax initialises a backend (STYLE.md, point 7)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
