"""pallas_kernels: each kernel (interpret mode) against its reference; grads; GPU lowering; policy.

Interpret mode compiles a loop over the grid for every new shape, so sizes stay tiny and the
hypothesis tests draw few examples.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb_jax import InvalidArgumentError, semirings
from mmsb_jax import adaptive as backend
from pallas_kernels.scatter_merge import scatter_merge, scatter_merge_reference, scatter_merge_xla
from pallas_kernels.segment_reduce import (
    csr_from_segment_ids,
    gather_segment_reduce,
    gather_segment_reduce_csr,
    gather_segment_reduce_reference,
    segment_ids_from_csr,
    segment_reduce,
    segment_reduce_reference,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLOAT_SEMIRINGS = [s for s in semirings.STANDARD if s.dtype_kind == "float"]
ALL_SEMIRINGS = list(semirings.STANDARD) + [semirings.soft_tropical(0.5)]


def _values(rng, shape, semiring=None, dtype=np.float32):
    if semiring is not None and semiring.dtype_kind == "bool":
        return jnp.asarray(rng.random(shape) < 0.4)
    x = rng.standard_normal(shape).astype(dtype)
    if semiring is not None and semiring.name == "max_times":
        x = np.abs(x)
    return jnp.asarray(x)


def _assert_same(kind_or_sr, got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    exact = kind_or_sr in ("dense", "sparse", "overwrite") or getattr(kind_or_sr, "idempotent", False)
    if exact or got.dtype == np.bool_:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# =========================================================================== scatter_merge
def _merge_args(rng, kind, num_slots, page, n, k, unique, semiring=None):
    if unique:
        slots = rng.permutation(np.arange(-1, num_slots))[:n]  # distinct; -1 is padding
        slots = np.concatenate([slots, -np.ones(max(0, n - len(slots)), np.int64)])
    else:
        slots = rng.integers(-1, num_slots + 1, size=n)  # repeats, padding and out of range
    kw = {}
    width = int(np.prod(page))
    if kind == "sparse":
        kw["indices"] = jnp.asarray(rng.integers(-2, width + 2, size=(n, k)).astype(np.int32))
        payload = _values(rng, (n, k))
    else:
        payload = _values(rng, (n,) + page, semiring)
        if kind == "dense":
            kw["mask"] = jnp.asarray(rng.random((n,) + page) < 0.5)
        if kind == "accumulate":
            kw["semiring"] = semiring
    return jnp.asarray(slots.astype(np.int32)), payload, kw


@settings(max_examples=8)
@given(
    kind=st.sampled_from(["dense", "sparse", "accumulate", "overwrite"]),
    num_slots=st.integers(1, 9),
    page=st.sampled_from([(1,), (5,), (13,), (37,), (2, 9), (3, 4)]),
    n=st.integers(0, 7),
    k=st.integers(1, 5),
    unique=st.booleans(),
    block_rows=st.sampled_from([1, 2, 4]),
    block_lanes=st.sampled_from([4, 8, 16]),
    seed=st.integers(0, 2**16),
)
def test_scatter_merge_matches_reference(kind, num_slots, page, n, k, unique, block_rows, block_lanes, seed):
    rng = np.random.default_rng(seed)
    sr = semirings.TROPICAL if seed % 2 else semirings.REAL
    slots, payload, kw = _merge_args(rng, kind, num_slots, page, n, k, unique, sr)
    pool = _values(rng, (num_slots,) + page)
    want = scatter_merge_reference(pool, slots, payload, **kw)
    got = scatter_merge(pool, slots, payload, unique_slots=unique, block_rows=block_rows, block_lanes=block_lanes,
                        interpret=True, **kw)
    _assert_same(kw.get("semiring", kind), got, want)
    _assert_same(kw.get("semiring", kind), scatter_merge_xla(pool, slots, payload, unique_slots=unique, **kw), want)


@pytest.mark.parametrize("kind", ["dense", "sparse", "accumulate", "overwrite"])
def test_scatter_merge_duplicate_slots_apply_in_order(kind):
    rng = np.random.default_rng(1)
    page = (10,)
    pool = _values(rng, (3,) + page)
    slots = jnp.array([1, 1, 0, 1, -1, 2, 1, 0], jnp.int32)  # slot 1 four times, 0 twice
    _, payload, kw = _merge_args(rng, kind, 3, page, 8, 6, False, semirings.REAL)
    if kind == "sparse":  # force repeats inside rows and across rows of one slot
        kw["indices"] = jnp.asarray(rng.integers(0, 4, size=(8, 6)).astype(np.int32))
    want = scatter_merge_reference(pool, slots, payload, **kw)
    got = scatter_merge(pool, slots, payload, block_rows=2, block_lanes=4, interpret=True, **kw)
    _assert_same(kw.get("semiring", kind), got, want)


def test_scatter_merge_sparse_long_rows():
    """Rows longer than the in-kernel pairwise check: resolved by a sort, k split over blocks."""
    rng = np.random.default_rng(7)
    pool = _values(rng, (5, 40))
    slots = jnp.array([4, 0, 2], jnp.int32)
    idx = jnp.asarray(rng.integers(-1, 41, size=(3, 70)).astype(np.int32))  # many repeats per row
    vals = _values(rng, (3, 70))
    want = scatter_merge_reference(pool, slots, vals, indices=idx)
    got = scatter_merge(pool, slots, vals, indices=idx, unique_slots=True, block_lanes=32, interpret=True)
    np.testing.assert_array_equal(got, want)


def test_scatter_merge_reference_is_sequential_application():
    pool = jnp.zeros((2, 3), jnp.float32)
    slots = jnp.array([0, 0, 1], jnp.int32)
    payload = jnp.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]], jnp.float32)
    mask = jnp.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]], bool)
    out = scatter_merge_reference(pool, slots, payload, mask=mask)
    assert out.tolist() == [[1, 2, 2], [3, 0, 0]]
    idx = jnp.array([[0, 0, 2], [2, -1, 5], [1, 1, 1]], jnp.int32)  # last entry wins; -1 and 5 ignored
    vals = jnp.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], jnp.float32)
    assert scatter_merge_reference(pool, slots, vals, indices=idx).tolist() == [[2, 0, 4], [0, 9, 0]]


@pytest.mark.parametrize(
    "dtype, kind, sr",
    [(np.uint8, "dense", None), (np.bool_, "accumulate", semirings.BOOLEAN), (np.int32, "sparse", None)],
)
def test_scatter_merge_other_dtypes(dtype, kind, sr):
    rng = np.random.default_rng(2)
    page = (6,)
    pool = jnp.asarray(rng.integers(0, 2 if dtype == np.bool_ else 100, size=(4,) + page).astype(dtype))
    slots = jnp.array([3, 0, 3], jnp.int32)
    if kind == "sparse":
        kw = {"indices": jnp.asarray(rng.integers(0, 6, size=(3, 4)).astype(np.int32))}
        payload = jnp.asarray(rng.integers(0, 100, size=(3, 4)).astype(dtype))
    else:
        payload = jnp.asarray(rng.integers(0, 2 if dtype == np.bool_ else 100, size=(3,) + page).astype(dtype))
        kw = {"mask": jnp.asarray(rng.random((3,) + page) < 0.5)} if kind == "dense" else {"semiring": sr}
    want = scatter_merge_reference(pool, slots, payload, **kw)
    np.testing.assert_array_equal(scatter_merge(pool, slots, payload, interpret=True, **kw), want)


def test_scatter_merge_validates():
    pool = jnp.zeros((4, 3), jnp.float32)
    payload = jnp.ones((2, 3), jnp.float32)
    for fn in (scatter_merge, scatter_merge_xla):
        with pytest.raises(InvalidArgumentError, match="unique_slots=True but slots repeat"):
            fn(pool, jnp.array([1, 1], jnp.int32), payload, unique_slots=True)
    with pytest.raises(InvalidArgumentError, match="at most one of"):
        scatter_merge(pool, jnp.array([0, 1]), payload, mask=jnp.ones((2, 3), bool),
                      indices=jnp.zeros((2, 1), jnp.int32), interpret=True)
    with pytest.raises(InvalidArgumentError, match="payload.dtype"):
        scatter_merge(pool, jnp.array([0, 1]), payload.astype(jnp.int32), interpret=True)
    with pytest.raises(InvalidArgumentError, match="power of two"):
        scatter_merge(pool, jnp.array([0, 1]), payload, block_lanes=3, interpret=True)
    with pytest.raises(InvalidArgumentError, match="works on bool pages"):
        scatter_merge(pool, jnp.array([0, 1]), payload, semiring=semirings.BOOLEAN, interpret=True)
    # -1 padding never counts as a repeat
    out = scatter_merge(pool, jnp.array([-1, -1], jnp.int32), payload, unique_slots=True, interpret=True)
    np.testing.assert_array_equal(out, pool)


@pytest.mark.parametrize("kind", ["dense", "accumulate", "sparse"])
def test_scatter_merge_grad_matches_reference(kind):
    rng = np.random.default_rng(3)
    page = (7,)
    pool = _values(rng, (4,) + page)
    slots, payload, kw = _merge_args(rng, kind, 4, page, 5, 3, False, semirings.REAL)
    cot = _values(rng, (4,) + page)

    def loss(fn, p, v):
        return jnp.sum(fn(p, slots, v, **kw) * cot)

    kernel = lambda p, s, v, **k: scatter_merge(p, s, v, interpret=True, block_lanes=4, **k)
    got = jax.grad(loss, argnums=(1, 2))(kernel, pool, payload)
    want = jax.grad(loss, argnums=(1, 2))(scatter_merge_reference, pool, payload)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


# =========================================================================== segment_reduce
@pytest.mark.parametrize("semiring", ALL_SEMIRINGS, ids=lambda s: s.name)
def test_segment_reduce_every_semiring(semiring):
    rng = np.random.default_rng(4)
    n, e, r = 9, 30, 6
    ids = rng.choice(np.array([-1, 0, 2, 3, 3, 5, 8, 9]), size=e).astype(np.int32)  # 1, 4, 6, 7 empty; -1, 9 dropped
    ids = jnp.asarray(ids)
    data = _values(rng, (e, 3), semiring)
    got = segment_reduce(data, ids, n, semiring, block_segments=4, block_features=2, interpret=True)
    want = segment_reduce_reference(data, ids, n, semiring)
    _assert_same(semiring, got, want)
    empty = np.asarray(got)[[1, 4, 6, 7]]
    assert (empty == semiring.zero).all()  # the semiring zero, not NaN
    # fused: gather rows of x, ⊗ per-edge weights, ⊕ per destination
    x = _values(rng, (r, 3), semiring)
    src = jnp.asarray(rng.integers(0, r, size=e).astype(np.int32))
    w = _values(rng, (e,), semiring)
    got = gather_segment_reduce(x, src, w, ids, n, semiring, block_segments=2, interpret=True)
    _assert_same(semiring, got, gather_segment_reduce_reference(x, src, w, ids, n, semiring))


@settings(max_examples=6)
@given(
    n=st.integers(1, 17),
    e=st.integers(0, 40),
    feat=st.sampled_from([(), (1,), (3,), (2, 3)]),
    weights=st.sampled_from(["none", "edge", "full"]),
    sorted_ids=st.booleans(),
    block_segments=st.sampled_from([1, 2, 4, 8]),
    block_features=st.sampled_from([1, 2, 4]),
    semiring=st.sampled_from([semirings.TROPICAL, semirings.REAL, semirings.LOG]),
    seed=st.integers(0, 2**16),
)
def test_gather_segment_reduce_shapes(n, e, feat, weights, sorted_ids, block_segments, block_features, semiring,
                                      seed):
    rng = np.random.default_rng(seed)
    r = 5
    ids = rng.integers(-1, n + 1, size=e).astype(np.int32)
    if sorted_ids:
        ids = np.sort(ids)
    ids = jnp.asarray(ids)
    x = _values(rng, (r,) + feat)
    src = jnp.asarray(rng.integers(0, r, size=e).astype(np.int32))
    w = {"none": None, "edge": _values(rng, (e,)), "full": _values(rng, (e,) + feat)}[weights]
    want = gather_segment_reduce_reference(x, src, w, ids, n, semiring)
    got = gather_segment_reduce(x, src, w, ids, n, semiring, indices_are_sorted=sorted_ids,
                                block_segments=block_segments, block_features=block_features, interpret=True)
    _assert_same(semiring, got, want)
    assert not np.isnan(np.asarray(got)).any()


def test_csr_layout_round_trip():
    rng = np.random.default_rng(5)
    ids = rng.integers(-2, 8, size=50).astype(np.int32)
    order, offsets = csr_from_segment_ids(jnp.asarray(ids), 6)
    order, offsets = np.asarray(order), np.asarray(offsets)
    assert offsets[0] == 0 and offsets[-1] == ((ids >= 0) & (ids < 6)).sum()
    for v in range(6):
        seg = order[offsets[v]:offsets[v + 1]]
        np.testing.assert_array_equal(seg, np.flatnonzero(ids == v))  # stable: original order kept
    back = np.asarray(segment_ids_from_csr(jnp.asarray(offsets), 50))
    np.testing.assert_array_equal(back[: offsets[-1]], np.sort(ids[(ids >= 0) & (ids < 6)]))
    assert (back[offsets[-1]:] == 6).all()
    s = np.sort(ids)
    _, off2 = csr_from_segment_ids(jnp.asarray(s), 6, indices_are_sorted=True)
    np.testing.assert_array_equal(np.diff(np.asarray(off2)), np.bincount(s[(s >= 0) & (s < 6)], minlength=6))


@pytest.mark.parametrize("semiring", [semirings.REAL, semirings.LOG, semirings.TROPICAL], ids=lambda s: s.name)
def test_segment_grad_matches_reference(semiring):
    rng = np.random.default_rng(6)
    n, e, r = 6, 20, 5
    ids = jnp.asarray(rng.choice(np.array([0, 1, 3, 5]), size=e).astype(np.int32))  # 2 and 4 empty
    x = _values(rng, (r, 2))
    src = jnp.asarray(rng.integers(0, r, size=e).astype(np.int32))
    w = _values(rng, (e,))
    cot = _values(rng, (n, 2))

    def loss(fn, a, b):
        out = fn(a, src, b, ids, n, semiring)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0) * cot)

    kernel = lambda *a: gather_segment_reduce(*a, interpret=True)
    got = jax.grad(loss, argnums=(1, 2))(kernel, x, w)
    want = jax.grad(loss, argnums=(1, 2))(gather_segment_reduce_reference, x, w)
    for g, wt in zip(got, want):
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(g, wt, rtol=1e-5, atol=1e-6)
    if semiring is semirings.REAL:  # the plain op too
        data = _values(rng, (e, 2))
        g1 = jax.grad(lambda d: jnp.sum(segment_reduce(d, ids, n, semiring, interpret=True) * cot))(data)
        g2 = jax.grad(lambda d: jnp.sum(segment_reduce_reference(d, ids, n, semiring) * cot))(data)
        np.testing.assert_allclose(g1, g2, rtol=1e-6)


def test_segment_reduce_validates():
    with pytest.raises(InvalidArgumentError, match="works on bool"):
        segment_reduce(jnp.ones((3,), jnp.float32), jnp.zeros((3,), jnp.int32), 2, semirings.BOOLEAN, interpret=True)
    with pytest.raises(InvalidArgumentError, match="weights must be"):
        gather_segment_reduce_csr(jnp.ones((3, 2)), jnp.zeros((4,), jnp.int32), jnp.ones((4, 3)),
                                  jnp.array([0, 4]), semirings.REAL, interpret=True)
    with pytest.raises(InvalidArgumentError, match="power of two"):
        segment_reduce(jnp.ones((3,)), jnp.zeros((3,), jnp.int32), 2, semirings.REAL, block_segments=6)


# =========================================================================== GPU lowering (no device)
def _lower_for_cuda(fn, *args):
    """Lower ``fn`` for CUDA on this host; verify the Triton IR of each kernel where the
    (private) lowering hook is there to wrap. Returns ``(stablehlo_text, [verified, ...])``."""
    try:
        from jax._src.pallas.triton import pallas_call_registration as reg

        orig = reg.lowering.lower_jaxpr_to_triton_module
    except (ImportError, AttributeError):  # another jax layout: lower without verifying
        reg = orig = None
    seen = []

    def checked(*a, **k):
        res = orig(*a, **k)
        seen.append(res.module.operation.verify())
        return res

    if reg is not None:
        reg.lowering.lower_jaxpr_to_triton_module = checked
    try:
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    except Exception as e:
        if "cuda" in str(e).lower() and ("platform" in str(e).lower() or "backend" in str(e).lower()):
            pytest.skip(f"cannot lower for CUDA on this host: {e}")
        raise
    finally:
        if reg is not None:
            reg.lowering.lower_jaxpr_to_triton_module = orig
    return text, seen


@pytest.mark.skipif(backend.gpu_lowering() is None, reason="this jax has no Triton lowering")
@pytest.mark.parametrize("case", ["dense", "sparse", "sparse-long", "accumulate-log", "grouped-dense",
                                  "segment-log", "segment-bool-features"])
def test_kernels_lower_to_valid_triton_ir(case):
    sd = jax.ShapeDtypeStruct
    f32, i32 = jnp.float32, jnp.int32
    pool, slots = sd((1000, 300), f32), sd((64,), i32)
    if case in ("dense", "grouped-dense"):
        uniq = case == "dense"
        fn = lambda p, s, v, m: scatter_merge(p, s, v, mask=m, unique_slots=uniq)
        args = (pool, slots, sd((64, 300), f32), sd((64, 300), jnp.bool_))
    elif case in ("sparse", "sparse-long"):
        k = 16 if case == "sparse" else 100
        fn = lambda p, s, v, i: scatter_merge(p, s, v, indices=i, unique_slots=True)
        args = (pool, slots, sd((64, k), f32), sd((64, k), i32))
    elif case == "accumulate-log":
        fn = lambda p, s, v: scatter_merge(p, s, v, semiring=semirings.LOG, unique_slots=True)
        args = (pool, slots, sd((64, 300), f32))
    elif case == "segment-log":
        fn = lambda x, s, w, o: gather_segment_reduce_csr(x, s, w, o, semirings.LOG)
        args = (sd((500,), f32), sd((4000,), i32), sd((4000,), f32), sd((1001,), i32))
    else:
        fn = lambda x, s, w, o: gather_segment_reduce_csr(x, s, w, o, semirings.BOOLEAN)
        args = (sd((500, 3, 5), jnp.bool_), sd((4000,), i32), sd((4000, 3, 5), jnp.bool_), sd((1001,), i32))
    text, verified = _lower_for_cuda(fn, *args)
    assert all(verified)  # each kernel's Triton module passes MLIR verification
    assert "triton" in text
    if not case.startswith("segment"):
        assert "output_operand_alias" in text  # the pool is updated in place


# =========================================================================== backend policy
@pytest.fixture
def clean_backend(monkeypatch):
    monkeypatch.delenv("MMSB_KERNELS", raising=False)
    old = backend.set_backend(None)
    yield monkeypatch
    backend.set_backend(old)


def test_backend_policy(clean_backend):
    monkeypatch = clean_backend
    assert backend.MEASURED_FASTER == {}  # nothing measured on a GPU yet
    assert backend.get_backend() == ("auto", "default")
    assert not any(backend.use_pallas(k) for k in backend.KERNELS)  # CPU: XLA everywhere
    assert backend.interpret() is True
    monkeypatch.setenv("MMSB_KERNELS", "pallas")
    assert backend.get_backend() == ("pallas", "env") and backend.use_pallas("segment_reduce")
    backend.set_backend("xla")  # the function beats the environment
    assert backend.get_backend() == ("xla", "set_backend") and not backend.use_pallas("segment_reduce")
    assert backend.set_backend(None) == "xla"
    monkeypatch.setenv("MMSB_KERNELS", "bogus")
    with pytest.raises(ValueError, match="MMSB_KERNELS"):
        backend.use_pallas("segment_reduce")
    monkeypatch.delenv("MMSB_KERNELS")
    with pytest.raises(ValueError, match="set_backend"):
        backend.set_backend("cuda")
    with pytest.raises(ValueError, match="unknown kernel kind"):
        backend.use_pallas("matmul")
    # auto on a GPU: only measured kernels
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not backend.use_pallas("scatter_merge.dense")
    monkeypatch.setitem(backend.MEASURED_FASTER, "scatter_merge.dense", {"speedup": 2.0})
    assert backend.use_pallas("scatter_merge.dense") == (backend.gpu_lowering() is not None)
    assert not backend.use_pallas("scatter_merge.sparse")


def test_backend_report_is_json(clean_backend):
    rep = backend.backend_report()
    json.dumps(rep)
    assert rep["mode"] == "auto" and rep["platform"] == jax.default_backend()
    assert set(rep["kernels"]) == set(backend.KERNELS)
    assert all(not v["use_pallas"] and v["reason"] for v in rep["kernels"].values())


# =========================================================================== benchmark smoke
def test_gpu_benchmark_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    errors = [r for r in doc["rows"] if "error" in r]
    assert not errors, errors
    cases = {r["case"] for r in doc["rows"]}
    assert {"copy", "scatter_merge.dense", "scatter_merge.sparse", "gather_segment_reduce"} <= cases
    assert doc["summary"]["scatter_merge.dense"]["speedup"] > 0
    assert doc["suggested_measured_faster"] == {}  # never from interpret-mode timings
