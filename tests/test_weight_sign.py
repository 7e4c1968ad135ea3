"""MAX_TIMES is defined on values >= 0: a negative edge weight is refused where weights are
given (state dependencies, graph compile), the state left as it was; logs written before the
rule still replay as written."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import InvalidArgumentError, semirings
from mmsb_jax.graph import ShadowPageGraph
from mmsb_jax.semirings._carriers import first_negative


def _state(path=None, dtype=np.float32):
    st = mmsb.mmsb_start(path, semiring="max_times")
    ids = mmsb.create_pages(st, 3, size=4, dtype=dtype)
    mmsb.update_page(st, int(ids[0]), np.array([1, 2, 3, 4], dtype))
    return st, ids


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.bool_])
def test_negative_weight_refused_state_unchanged(dtype):
    st, ids = _state(dtype=dtype)
    before = (mmsb.state_digest(st), st.epoch, len(st.dependencies()))
    with pytest.raises(InvalidArgumentError, match=r"weight -2(\.0)? .*max_times.*>= 0"):
        mmsb.add_dependency(st, int(ids[0]), int(ids[1]), weight=-2.0)
    with pytest.raises(InvalidArgumentError, match=r"-0\.5 of dependency"):
        mmsb.add_dependencies(st, [int(ids[0]), int(ids[1])], [int(ids[2]), int(ids[2])], [1.0, -0.5])
    assert (mmsb.state_digest(st), st.epoch, len(st.dependencies())) == before
    if np.dtype(dtype).kind in "iub":  # integer pages: the weight is named as the integer it is
        with pytest.raises(InvalidArgumentError, match=r"weight -1 of dependency"):
            mmsb.add_dependency(st, int(ids[0]), int(ids[1]), weight=-1)
    mmsb.add_dependency(st, int(ids[0]), int(ids[1]), weight=0.0)  # the zero is no negative weight
    mmsb.add_dependency(st, int(ids[1]), int(ids[2]))  # None: the one
    mmsb.mmsb_stop(st)


def test_compile_refuses_negative_weights_unless_told_not_to():
    g = ShadowPageGraph()
    g.add_dependencies([0, 1], [1, 2], [0.5, -3.0])
    with pytest.raises(InvalidArgumentError, match=r"edge \(1, 2\) has weight -3\.0.*max_times"):
        g.compile(semirings.MAX_TIMES, num_nodes=3)
    g.compile(semirings.MAX_TIMES, num_nodes=3, check_sign=False)
    g.compile(semirings.REAL, num_nodes=3)  # other semirings take negative weights
    g.compile(semirings.TROPICAL, num_nodes=3)


def test_first_negative():
    assert first_negative(semirings.MAX_TIMES, [0.0, np.nan, 2.0]) == -1
    assert first_negative(semirings.MAX_TIMES, [0.0, -1e-30]) == 1
    assert first_negative(semirings.REAL, [-5.0]) == -1
    assert semirings.MAX_TIMES.nonnegative and not semirings.REAL.nonnegative


def test_a_log_written_before_the_rule_still_replays(tmp_path, monkeypatch):
    """An edge with a negative weight logged by an earlier version (simulated by lifting the
    rule while writing) replays and restores from a checkpoint as written."""
    import mmsb_jax.shell._deps as deps

    path = str(tmp_path / "s")
    st, ids = _state(path)
    with monkeypatch.context() as m:
        m.setattr(deps, "first_negative", lambda *a: -1)
        mmsb.add_dependency(st, int(ids[0]), int(ids[1]), weight=-2.0)
    mmsb.update_page(st, int(ids[0]), np.array([4, 3, 2, 1], np.float32))
    digest, deps_before = mmsb.state_digest(st), st.dependencies()
    mmsb.mmsb_stop(st)
    again = mmsb.mmsb_open(path)  # replay of the whole log
    assert mmsb.state_digest(again) == digest and again.dependencies() == deps_before
    mmsb.checkpoint(again)
    mmsb.mmsb_stop(again)
    third = mmsb.mmsb_open(path)  # from the checkpoint
    assert mmsb.state_digest(third) == digest
    with pytest.raises(InvalidArgumentError, match="negative"):  # new edges still meet the rule
        mmsb.add_dependency(third, int(ids[1]), int(ids[2]), weight=-1.0)
    mmsb.mmsb_stop(third)


@pytest.mark.parametrize("semiring, weight", [("real", np.inf), ("real", -np.inf), ("max_times", np.inf),
                                              ("log", np.inf), ("tropical", -np.inf), ("max_plus", np.inf)])
def test_an_infinite_weight_that_is_not_the_zero_is_refused_on_float_pages(semiring, weight):
    """Such a weight turns the semiring's zeros it meets into NaN (real: inf * 0); it was taken,
    although the docs said weights on float pages are finite. The semiring's zero (an edge
    that carries nothing) stays allowed."""
    s = mmsb.mmsb_start(semiring=semiring)
    a, b = mmsb.create_pages(s, 2, size=2, dtype=jnp.float32)
    before, epoch = mmsb.state_digest(s), s.epoch
    with pytest.raises(mmsb.InvalidArgumentError, match=rf"weight {weight!r} of dependency {a} -> {b}.*finite"):
        mmsb.add_dependency(s, a, b, weight=weight)
    with pytest.raises(mmsb.InvalidArgumentError, match="finite"):
        mmsb.add_dependencies(s, [a], [b], weights=[weight])
    assert mmsb.state_digest(s) == before and s.epoch == epoch
    zero = float(mmsb.semirings.get_semiring(semiring).zero)
    if not np.isfinite(zero):
        mmsb.add_dependency(s, a, b, weight=zero)  # the zero: an edge that carries nothing
        assert not np.isnan(np.asarray(mmsb.query_page(s, b))).any()
    mmsb.mmsb_stop(s)
