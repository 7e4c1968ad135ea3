"""Test fixtures and the hypothesis profile (devices and promotion rules: ../conftest.py)."""

import os

import pytest
from hypothesis import HealthCheck, settings

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
