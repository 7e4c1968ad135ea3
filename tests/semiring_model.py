"""Plain-numpy models of the standard semirings on every dtype, and of propagation.

Written from the carrier table (``semirings.CARRIER_TABLE``), not from the library's code:
integer + and * wrap (numpy array arithmetic), min/max-plus keep their integer infinity, bool
pages use the GraphBLAS renamings (PLUS/MAX -> or, TIMES/MIN -> and).
"""

from __future__ import annotations

import numpy as np

from mmsb_jax.graph import ShadowPageGraph

X64_DTYPES = {np.dtype(np.int64), np.dtype(np.uint64), np.dtype(np.float64)}


def kind(dt) -> str:
    dt = np.dtype(dt)
    return "bool" if dt == np.bool_ else {"i": "signed", "u": "unsigned"}.get(dt.kind, "float")


def np_semiring(name: str, dt):
    """``(add, mul, zero, one)`` of the standard semiring ``name`` on numpy arrays of ``dt``,
    or ``None`` where the table refuses the dtype."""
    dt = np.dtype(dt)
    k = kind(dt)
    name = name.split("(")[0]
    big = np.iinfo(dt).max if k in ("signed", "unsigned") else np.inf
    small = np.iinfo(dt).min if k in ("signed", "unsigned") else -np.inf

    def keep(z):  # + that keeps the integer infinity z
        def mul(a, b):
            a, b = np.asarray(a, dt), np.asarray(b, dt)
            with np.errstate(over="ignore"):
                return np.where((a == z) | (b == z), dt.type(z), (a + b).astype(dt))

        return mul

    def wrapping(op):  # numpy integer arithmetic wraps; only its overflow warning is silenced
        def run(a, b):
            with np.errstate(over="ignore"):
                return op(np.asarray(a, dt), np.asarray(b, dt)).astype(dt)

        return run

    if name in ("real", "max_times") and k == "bool":
        return np.logical_or, np.logical_and, False, True
    if name == "real":
        return wrapping(np.add), wrapping(np.multiply), dt.type(0), dt.type(1)
    if name == "max_times":
        return np.maximum, wrapping(np.multiply), dt.type(0), dt.type(1)
    if name == "tropical":
        if k == "bool":
            return np.logical_and, np.logical_or, True, False
        return np.minimum, (keep(big) if k != "float" else np.add), dt.type(big), dt.type(0)
    if name == "max_plus":
        if k in ("bool", "unsigned"):
            return None
        return np.maximum, (keep(small) if k != "float" else np.add), dt.type(small), dt.type(0)
    if name == "boolean":
        return (np.logical_or, np.logical_and, False, True) if k == "bool" else None
    if name == "log":
        return (np.logaddexp, np.add, dt.type(-np.inf), dt.type(0)) if k == "float" else None
    if name == "soft_tropical":  # (min, +) smoothed; only the identities are modelled here
        return (None, np.add, dt.type(np.inf), dt.type(0)) if k == "float" else None
    raise ValueError(name)


def weights_as(name: str, w: np.ndarray, dt, float_zero: float) -> np.ndarray:
    """The weight rule, as the docs state it: bool pages: ``w != zero``; integer pages: the
    zero maps to the dtype's zero, the rest must be integral; float pages: rounded."""
    dt = np.dtype(dt)
    k = kind(dt)
    _, _, zero, one = np_semiring(name, dt)
    if k == "bool":
        return np.where(w == float_zero, zero, one).astype(dt)
    if k == "float":
        return w.astype(dt)
    assert np.all((w == float_zero) | (np.floor(w) == w))
    return np.where(w == float_zero, zero, np.where(np.isfinite(w), w, 0).astype(dt)).astype(dt)


def model_propagate(n: int, pairs, w, b, ops):
    """``x[v] = b[v] ⊕ ⨁ w ⊗ x[u]`` in a topological order (every node once)."""
    add, mul, zero, _ = ops
    x = np.array(b, copy=True)
    parents = {v: [] for v in range(n)}
    for (u, v), wt in zip(pairs, w):
        parents[v].append((u, wt))
    order, seen = [], set()

    def visit(v):
        if v in seen:
            return
        seen.add(v)
        for u, _ in parents[v]:
            visit(u)
        order.append(v)

    for v in range(n):
        visit(v)
    for v in order:
        if parents[v]:
            acc = np.full(x.shape[1:], zero, x.dtype)
            for u, wt in parents[v]:
                acc = add(acc, mul(wt, x[u]))
            x[v] = add(x[v], acc)
    return x


def random_dag(seed: int, n: int = 16, max_edges: int = 40, max_indeg: int = 4, weights=None):
    """``(graph, data edges [(u, v)], weights)`` with ids not in topological order.

    ``weights(rng, m)`` draws the float weights (default uniform in [0.1, 2)). A fixed node
    of in-degree ``max_indeg`` keeps compiled shapes equal across seeds.
    """
    rng = np.random.default_rng(seed)
    hidden = rng.permutation(n)
    m = int(rng.integers(0, max_edges + 1))
    c = rng.integers(1, n, m)
    p = (rng.random(m) * c).astype(int)
    fixed = [(i, n - 1) for i in range(max_indeg)]
    pairs, indeg = [], np.zeros(n, int)
    for a, bb in dict.fromkeys(fixed + list(zip(p.tolist(), c.tolist()))):
        if indeg[bb] < max_indeg:
            indeg[bb] += 1
            pairs.append((int(hidden[a]), int(hidden[bb])))
    w = rng.uniform(0.1, 2.0, len(pairs)) if weights is None else np.asarray(weights(rng, len(pairs)), np.float64)
    g = ShadowPageGraph()
    g.add_dependencies(np.array([u for u, _ in pairs], np.int64), np.array([v for _, v in pairs], np.int64), w)
    return g, pairs, w


def random_pages(rng, dt, shape, zero):
    """Random page values of ``dt`` over its whole range (integers: overflow happens), with
    some of the semiring's zeros mixed in."""
    dt = np.dtype(dt)
    k = kind(dt)
    if k == "bool":
        x = rng.random(shape) < 0.5
    elif k in ("signed", "unsigned"):
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    else:
        x = rng.uniform(-3.0, 3.0, shape).astype(dt)
    return np.where(rng.random(shape) < 0.25, zero, x).astype(dt)
