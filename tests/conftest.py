"""Test configuration: strict dtype/rank promotion and 8 virtual CPU devices (STYLE.md, 7)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "mmsb",
    deadline=None,
    max_examples=int(os.environ.get("MMSB_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("mmsb")


@pytest.fixture
def tmp_state_dir(tmp_path):
    return tmp_path / "state"
