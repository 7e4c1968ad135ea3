"""Layer 5's propagation strategy: the cost model's choice (incremental vs full) never changes a
result; its decisions are visible in ``get_stats()["adaptive"]`` and it can be switched off."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mmsb_jax as mmsb
from mmsb_jax.telemetry import PropagationStrategy

F32 = np.float32


@st.composite
def dag_and_writes(draw):
    n = draw(st.integers(3, 9))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=14))
    edges = sorted({(min(u, v), max(u, v)) for u, v in pairs if u != v})  # u < v: a DAG
    writes = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(-5, 5)), min_size=1, max_size=10))
    semiring = draw(st.sampled_from(["tropical", "max_plus"]))
    return n, edges or [(0, 1)], writes, semiring


def run(n, edges, writes, semiring, policy):
    s = mmsb.mmsb_start(semiring=semiring)
    try:
        s.propagation_policy = policy
        ids = [int(i) for i in mmsb.create_pages(s, n, shape=(3,), dtype=F32, fill="zero")]
        mmsb.add_dependencies(s, [ids[u] for u, _ in edges], [ids[v] for _, v in edges])
        for k, (p, v) in enumerate(writes):
            mmsb.update_page(s, ids[p], np.array([v, k, -v], F32))
        reads = [np.asarray(mmsb.query_page(s, i)).tobytes() for i in ids]
        return mmsb.state_digest(s), reads, mmsb.get_stats(s)["adaptive"]["propagation"]
    finally:
        mmsb.mmsb_stop(s)


@settings(max_examples=8)
@given(dag_and_writes())
def test_policy_on_and_off_give_identical_results(case):
    n, edges, writes, semiring = case
    d_on, r_on, rep_on = run(n, edges, writes, semiring, "cost")
    d_off, r_off, rep_off = run(n, edges, writes, semiring, "fixed")
    assert d_on == d_off and r_on == r_off
    assert rep_on["mode"] == "cost" and rep_off["mode"] == "fixed"
    assert set(rep_off["reasons"]) <= {"policy off: incremental whenever exact", "no propagated values of this size yet"}


def test_full_only_under_real_and_reasons_visible():
    s = mmsb.mmsb_start(semiring="real")
    try:
        a, b = (int(i) for i in mmsb.create_pages(s, 2, size=2, dtype=F32))
        mmsb.add_dependency(s, a, b)
        for k in range(3):
            mmsb.update_page(s, a, np.full(2, k + 1.0, F32))
        rep = mmsb.get_stats(s)["adaptive"]["propagation"]
        assert rep["chosen"]["incremental"] == 0 and rep["chosen"]["full"] == 3
        assert rep["reasons"]["semiring not idempotent: only full passes replay bit-exactly"] >= 2
    finally:
        mmsb.mmsb_stop(s)


def test_strategy_picks_the_cheaper_pass_and_explores_within_its_budget():
    s = PropagationStrategy()
    s.record("full", 1.0, warmup=True)  # a compiling first pass: a bound only
    s.record("incremental", 0.01, warmup=True)
    assert s.estimate("full") is None
    picks = [s.choose(exact=True, have_values=True) for _ in range(3)]
    assert picks[0] == "incremental"  # incremental not measured yet
    for _ in range(5):
        s.record("incremental", 0.01)
    for _ in range(5):
        s.record("full", 0.001)  # full turns out cheaper
    picks = []
    for _ in range(200):
        c = s.choose(exact=True, have_values=True)
        picks.append(c)
        s.record(c, 0.001 if c == "full" else 0.01)
    explored = picks.count("incremental")
    assert picks.count("full") > 150
    assert 0 < explored * 0.01 <= (200 * 0.001) / 8 + 0.01 * 2  # exploring costs <= ~1/8 of the chosen time
    with pytest.raises(mmsb.InvalidArgumentError, match="'never'"):
        PropagationStrategy("never")
