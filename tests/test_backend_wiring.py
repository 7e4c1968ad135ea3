"""The shell routes through a Pallas kernel only when the backend policy says so, and the
result is the same either way (here the kernel runs in the Pallas interpreter)."""

import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import adaptive as backend


@pytest.fixture
def forced_pallas():
    previous = backend.set_backend("pallas")
    yield
    backend.set_backend(previous)


def _route(ids_rows, ind, vals):
    st = mmsb.mmsb_start()
    ids = mmsb.create_pages(st, 6, size=10, dtype=np.float32)
    mmsb.route_sparse_batch(st, ids[ids_rows], ind, vals)
    out = np.stack([np.asarray(mmsb.query_page(st, int(i))) for i in ids])
    stats = mmsb.get_stats(st)["kernels"]
    mmsb.mmsb_stop(st)
    return out, stats


def test_auto_uses_xla_on_cpu_and_says_why():
    _, stats = _route(np.array([0]), np.array([[1]], np.int32), np.array([[2.0]], np.float32))
    entry = stats["kernels"]["scatter_merge.sparse"]
    assert entry["use_pallas"] is False and "cpu" in entry["reason"]


def test_forced_pallas_matches_xla_with_duplicates(forced_pallas):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 6, 40)  # many repeats of each page
    ind = rng.integers(0, 10, (40, 3)).astype(np.int32)
    vals = rng.standard_normal((40, 3)).astype(np.float32)
    got, stats = _route(rows, ind, vals)
    assert stats["kernels"]["scatter_merge.sparse"]["use_pallas"] is True
    backend.set_backend("xla")
    want, _ = _route(rows, ind, vals)
    model = np.zeros((6, 10), np.float32)
    for r in range(40):
        for j in range(3):
            model[rows[r], ind[r, j]] = vals[r, j]
    np.testing.assert_array_equal(want, model)
    np.testing.assert_array_equal(got, model)
