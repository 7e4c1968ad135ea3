"""Law checks: does a :class:`Semiring` record really define a semiring?

:func:`check_laws` evaluates every semiring law on all triples of a few sample values and
returns a :class:`LawReport` naming each law that failed and the values it failed on. It is
meant for tests (with hypothesis-generated samples) and for checking a user-defined record
before handing it to the graph.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InvalidArgumentError
from ._base import Semiring
from ._report import LAWS, LawFailure, LawReport

Array = Any

# Laws that use only ⊕: exact (no tolerance) for idempotent semirings, whose ⊕ is min/max/or.
_ADD_ONLY = frozenset(
    {
        "add_associative",
        "add_commutative",
        "add_identity",
        "add_idempotent",
        "segment_reduce_fold",
        "reduce_fold",
    }
)


# --------------------------------------------------------------------------- helpers
def _default_tolerance(dtype) -> float:
    dt = np.dtype(dtype)
    if dt == np.bool_ or not jnp.issubdtype(dt, jnp.floating):
        return 0.0
    return 64.0 * float(jnp.finfo(dt).eps)


def _as_np(x) -> np.ndarray:
    return np.asarray(x)


def _scale(arrays) -> np.ndarray:
    """Per element: the largest finite magnitude among ``arrays`` (0 where none is finite)."""
    out = None
    for x in arrays:
        x = _as_np(x)
        if x.dtype == np.bool_:
            continue
        m = np.where(np.isfinite(x), np.abs(x.astype(np.float64)), 0.0)
        out = m if out is None else np.maximum(out, m)
    return out


def _close(lhs, rhs, scale, rtol, atol, exact) -> np.ndarray:
    """Elementwise: equal (the same infinity counts as equal), or both finite and within tolerance."""
    lhs, rhs = _as_np(lhs), _as_np(rhs)
    if lhs.shape != rhs.shape:
        lhs, rhs = np.broadcast_arrays(lhs, rhs)
    eq = lhs == rhs
    if exact or lhs.dtype == np.bool_ or rhs.dtype == np.bool_:
        return eq
    lf, rf = lhs.astype(np.float64), rhs.astype(np.float64)
    fin = np.isfinite(lf) & np.isfinite(rf)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(np.where(fin, lf - rf, 0.0))
    tol = atol + rtol * (0.0 if scale is None else np.broadcast_to(scale, diff.shape))
    return eq | (fin & (diff <= tol))


# --------------------------------------------------------------------------- check_laws
def check_laws(
    semiring: Semiring,
    samples,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    exact: bool | None = None,
    dtype=None,
    max_failures: int = 3,
) -> LawReport:
    """Check the semiring laws of ``semiring`` on all triples of ``samples``.

    With ``n`` samples, the three-variable laws run on all ``n³`` triples ``(a, b, c)`` (keep
    ``n`` around 10), the others on all pairs / values. Checked: ⊕ associative and
    commutative; ⊗ associative (and commutative when the record is tagged ``commutative``);
    left and right distributivity; ``zero`` is the ⊕ identity and ``one`` the ⊗ identity, on
    both sides; ``zero`` annihilates under ⊗ (on the samples given: on floats, an opposite
    infinity gives IEEE NaN); ``a ⊕ a == a`` when tagged ``idempotent``;
    ``segment_reduce`` and ``reduce`` equal a left fold of ``add`` from ``zero`` (per segment
    of three, per single value, on an empty segment, on an empty axis and on empty data).
    The record's functions run under ``jax.jit`` (as the graph runs them); an error raised
    while evaluating a law counts as that law failing.

    Comparison: both sides equal (``inf == inf``: the same infinity on both sides is equal),
    or both finite with ``|lhs - rhs| <= atol + rtol * scale``, where ``scale`` is the largest
    finite magnitude among that instance's operands and intermediate values (floating ⊕/⊗
    like ``+`` or ``logaddexp`` are only approximately associative). NaN never passes.

    Args:
      semiring: the record to check.
      samples: sample carrier values (any array-like; flattened). Include the zero, the one
        and, where meaningful, infinities.
      rtol: relative tolerance; default ``64 * eps`` of the dtype (0 for bool).
      atol: absolute tolerance; default 0.
      exact: ``None`` (default): every law on bool and integer carriers and the ⊕-only laws
        of an idempotent semiring (min, max, or: no rounding) are checked exactly, the rest
        with the tolerance; ``True``: every law exactly; ``False``: every law with the tolerance.
      dtype: the carrier dtype to cast ``samples`` to (default: a NumPy / jax array's own
        dtype; bool for ``dtype_kind == "bool"``; float32 for Python numbers).
      max_failures: how many failing instances to record per law (all are counted).

    Returns:
      a :class:`LawReport`; ``report.ok`` is true when every checked law holds.

    Raises:
      InvalidArgumentError: ``semiring`` is not a :class:`Semiring`, or the samples' dtype
        is not a valid carrier for it (``semiring.accepts(dtype)`` is false).

    Example:
      >>> from mmsb_jax import semirings
      >>> report = semirings.check_laws(semirings.TROPICAL, [0.0, 1.5, -2.0, float("inf")])
      >>> report.ok
      True
      >>> bad = semirings.TROPICAL._replace(name="bad", zero=0.0)  # wrong ⊕ identity
      >>> semirings.check_laws(bad, [0.0, 1.5, -2.0]).failed_laws[:1]
      ('add_identity',)
    """
    if not isinstance(semiring, Semiring):
        raise InvalidArgumentError(f"check_laws needs a Semiring record, got semiring={semiring!r}")
    x = _samples(semiring, samples, dtype)
    tol = _default_tolerance(x.dtype)
    rtol = tol if rtol is None else float(rtol)
    atol = 0.0 if atol is None else float(atol)

    integral = x.dtype.kind in "biu"  # bool and integer carriers: every law exactly
    laws = [law for law in LAWS if _claimed(semiring, law)]
    skipped = tuple(law for law in LAWS if law not in laws)
    failures, counts = [], {}
    ops, abc = _Ops(semiring, x.dtype), _triples(x)
    for law in laws:
        law_exact = exact if exact is not None else (integral or (semiring.idempotent and law in _ADD_ONLY))
        try:
            found, count = _check_one(ops, law, abc, x.shape[0], rtol, atol, law_exact, max_failures)
        except Exception as err:  # noqa: BLE001 - a law that cannot be evaluated fails
            found, count = [LawFailure(law, (), None, None, f"raised {type(err).__name__}: {err}")], 1
        if count:
            failures.extend(found)
            counts[law] = count
    return LawReport(
        semiring=str(semiring.name),
        num_samples=int(x.shape[0]),
        dtype=str(x.dtype),
        checked=tuple(laws),
        skipped=skipped,
        failures=tuple(failures),
        counts=counts,
    )


def _claimed(semiring: Semiring, law: str) -> bool:
    if law == "mul_commutative":
        return bool(semiring.commutative)
    if law == "add_idempotent":
        return bool(semiring.idempotent)
    return True


def _samples(semiring: Semiring, samples, dtype) -> np.ndarray:
    typed = isinstance(samples, (np.ndarray, np.generic, jax.Array))
    x = jnp.asarray(samples) if dtype is None else jnp.asarray(samples, dtype=dtype)
    if dtype is None:
        if semiring.dtype_kind == "bool":
            x = x.astype(jnp.bool_)
        elif not (typed or jnp.issubdtype(x.dtype, jnp.floating)):
            x = x.astype(jnp.float32)  # Python numbers: the float carrier
    x = x.reshape(-1)
    why = semiring.refusal(x.dtype)
    if why is not None:
        raise InvalidArgumentError(f"check_laws: samples of dtype {x.dtype} are not valid carriers: {why}")
    return np.asarray(x)


class _Case(NamedTuple):
    detail: str
    lhs: Array
    rhs: Array
    operands: tuple = ()  # arrays aligned with lhs: reported as the failing (a, b, c)
    intermediates: tuple = ()  # further values whose magnitude sets the tolerance scale


def _case(detail: str, lhs, rhs, operands: tuple = (), intermediates: tuple = ()) -> _Case:
    """A case whose ``lhs`` may be the exception its evaluation raised."""
    if isinstance(lhs, Exception):
        return _Case(f"{detail}: raised {type(lhs).__name__}: {lhs}", lhs, None)
    return _Case(detail, lhs, rhs, operands, intermediates)


@functools.lru_cache(maxsize=512)
def _jitted(fn: Callable, static_argnums: tuple = ()) -> Callable:
    """``fn`` under ``jax.jit`` (cached per function): one compile per shape instead of one
    per primitive, and the functions are checked the way the graph runs them."""
    return jax.jit(fn, static_argnums=static_argnums)


def _run_many(fn: Callable, statics: tuple) -> Callable:
    """One function running ``fn(*args, static)`` for each of several argument sets."""

    def run(arg_sets):
        return tuple(fn(*args, static) for args, static in zip(arg_sets, statics))

    return run


_jitted_many = functools.lru_cache(maxsize=512)(lambda fn, statics: jax.jit(_run_many(fn, statics)))


def _jit_many(fn: Callable, statics: tuple) -> Callable:
    try:
        return _jitted_many(fn, statics)
    except TypeError:  # an unhashable callable: jit it afresh
        return jax.jit(_run_many(fn, statics))


def _jit(fn: Callable, static_argnums: tuple = ()) -> Callable:
    try:
        return _jitted(fn, static_argnums)
    except TypeError:  # an unhashable callable: jit it afresh
        return jax.jit(fn, static_argnums=static_argnums)


class _Ops:
    """The record's functions, jitted, on NumPy arrays; ⊕/⊗ results are memoized per call of
    :func:`check_laws` (several laws share ``a ⊕ b``, ``a ⊗ b``, ...)."""

    def __init__(self, semiring: Semiring, dtype):
        self.semiring = semiring
        self.dtype = np.dtype(dtype)
        self.zero, self.one = semiring.zero_for(dtype), semiring.one_for(dtype)
        self._memo: dict = {}

    def _binary(self, name, fn, a, b):
        key = (name, id(a), id(b))
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = (np.asarray(_jit(fn)(a, b)), a, b)  # keep a, b alive: ids stay valid
        return hit[0]

    def add(self, a, b):
        return self._binary("add", self.semiring.add, a, b)

    def mul(self, a, b):
        return self._binary("mul", self.semiring.mul, a, b)

    def reduce_many(self, calls) -> list:
        """``[(x, axis), ...]`` -> ``reduce(x, axis)`` for each (an exception where one raised)."""
        return self._many(self.semiring.reduce, [((x,), axis) for x, axis in calls])

    def segment_reduce_many(self, calls) -> list:
        """``[(data, ids, num_segments), ...]`` -> ``segment_reduce(...)`` for each."""
        return self._many(self.semiring.segment_reduce, [((d, i), n) for d, i, n in calls])

    @staticmethod
    def _many(fn, calls) -> list:
        # One jit for all the calls (one compile); if it raises, run them one by one so the
        # error is pinned on the variant that raised.
        statics = tuple(static for _, static in calls)
        try:
            return [np.asarray(out) for out in _jit_many(fn, statics)(tuple(args for args, _ in calls))]
        except Exception:  # noqa: BLE001
            results = []
            for args, static in calls:
                try:
                    results.append(np.asarray(_jit(fn, (len(args),))(*args, static)))
                except Exception as err:  # noqa: BLE001
                    results.append(err)
            return results

    def fill(self, value, shape):
        return np.full(shape, value, self.dtype)

    def fold(self, columns) -> tuple:
        """Left fold ``((zero ⊕ x0) ⊕ x1) ⊕ ...``; returns the result and its partial values."""
        acc = self.fill(self.zero, columns[0].shape)
        partials = []
        for col in columns:
            acc = self.add(acc, col)
            partials.append(acc)
        return acc, tuple(partials)


@functools.lru_cache(maxsize=64)
def _grid_index(n: int) -> np.ndarray:
    return np.array(list(itertools.product(range(n), repeat=3)), dtype=np.int64).reshape(-1, 3)


def _triples(x: np.ndarray) -> tuple:
    """``(a, b, c)``: flat arrays enumerating all ``n³`` triples of the samples (row-major)."""
    idx = _grid_index(x.shape[0])
    return tuple(x[idx[:, i]] for i in range(3))


def _collect(law: str, cases, rtol, atol, exact, max_failures) -> tuple:
    found, count = [], 0
    for case in cases:
        if isinstance(case.lhs, Exception):
            found.append(LawFailure(law, (), None, None, case.detail))
            count += 1
            continue
        lhs, rhs = np.broadcast_arrays(_as_np(case.lhs), _as_np(case.rhs))
        scale = _scale([*case.operands, *case.intermediates, lhs, rhs])
        bad = np.flatnonzero(~_close(lhs, rhs, scale, rtol, atol, exact).reshape(-1))
        count += int(bad.size)
        for i in bad[: max(1 if bad.size else 0, max_failures - len(found))]:  # each variant shows
            vals = tuple(_as_np(op).reshape(-1)[i] for op in case.operands)
            found.append(LawFailure(law, vals, lhs.reshape(-1)[i], rhs.reshape(-1)[i], case.detail))
    return found, count


def _check_one(ops: _Ops, law: str, abc: tuple, n: int, rtol, atol, exact, max_failures) -> tuple:
    # Every ⊕ / ⊗ call runs on the n³ triples (one shape: one compile per function); pairs
    # and single values are the sub-grids where c (and b) is the first sample.
    add, mul = ops.add, ops.mul
    if n == 0 and law not in ("segment_reduce_fold", "reduce_fold"):
        return [], 0
    a, b, c = abc
    pairs, singles = slice(None, None, n), slice(None, None, n * n)
    if law == "add_associative":
        ab, bc = add(a, b), add(b, c)
        cases = [_Case("", add(ab, c), add(a, bc), abc, (ab, bc))]
    elif law == "mul_associative":
        ab, bc = mul(a, b), mul(b, c)
        cases = [_Case("", mul(ab, c), mul(a, bc), abc, (ab, bc))]
    elif law == "left_distributive":
        bc, ab, ac = add(b, c), mul(a, b), mul(a, c)
        cases = [_Case("", mul(a, bc), add(ab, ac), abc, (bc, ab, ac))]
    elif law == "right_distributive":
        ab, ac, bc = add(a, b), mul(a, c), mul(b, c)
        cases = [_Case("", mul(ab, c), add(ac, bc), abc, (ab, ac, bc))]
    elif law in ("add_commutative", "mul_commutative"):
        op = add if law == "add_commutative" else mul
        cases = [_Case("", op(a, b)[pairs], op(b, a)[pairs], (a[pairs], b[pairs]))]
    elif law in ("add_identity", "mul_identity", "zero_annihilates", "add_idempotent"):
        s1 = a[singles]
        zero = ops.fill(ops.zero, a.shape)
        one = ops.fill(ops.one, a.shape)
        if law == "add_identity":
            cases = [
                _Case("zero ⊕ a", add(zero, a)[singles], s1, (s1,)),
                _Case("a ⊕ zero", add(a, zero)[singles], s1, (s1,)),
            ]
        elif law == "mul_identity":
            cases = [
                _Case("one ⊗ a", mul(one, a)[singles], s1, (s1,)),
                _Case("a ⊗ one", mul(a, one)[singles], s1, (s1,)),
            ]
        elif law == "zero_annihilates":
            z1 = zero[singles]
            cases = [
                _Case("zero ⊗ a", mul(zero, a)[singles], z1, (s1,)),
                _Case("a ⊗ zero", mul(a, zero)[singles], z1, (s1,)),
            ]
        else:
            cases = [_Case("", add(a, a)[singles], s1, (s1,))]
    elif law == "segment_reduce_fold":
        cases = _segment_cases(ops, abc, singles)
    elif law == "reduce_fold":
        cases = _reduce_cases(ops, abc)
    else:  # pragma: no cover - LAWS and this dispatch are kept in step
        raise InvalidArgumentError(f"unknown law {law!r}")
    return _collect(law, cases, rtol, atol, exact, max_failures)


def _segment_cases(ops: _Ops, abc: tuple, singles: slice) -> list:
    """Segment ``t < n³`` holds the triple ``(a_t, b_t, c_t)`` (entries not contiguous),
    segment ``n³ + i`` the single sample ``x_i``, the last segment nothing."""
    zero = ops.zero
    a = abc[0]
    t = a.shape[0]
    calls = [(a[:0], np.zeros((0,), np.int32), 2)]
    if t:
        s1 = a[singles]
        n = s1.shape[0]
        data = np.concatenate([*abc, s1])
        ids = np.concatenate([np.tile(np.arange(t), 3), t + np.arange(n)]).astype(np.int32)
        calls.append((data, ids, t + n + 1))
    results = ops.segment_reduce_many(calls)
    cases = [_case("no data, 2 segments", results[0], ops.fill(zero, (2,)))]
    if t:
        out = results[1]
        if isinstance(out, Exception):
            return cases + [_case("segments of (a, b, c), of (a,) and an empty one", out, None)]
        want, partials = ops.fold(abc)
        cases += [
            _case("segment of (a, b, c)", out[:t], want, abc, partials),
            _case("segment of (a,)", out[t : t + n], partials[0][singles], (s1,)),
            _case("empty segment among others", out[t + n :], ops.fill(zero, (1,))),
        ]
    return cases


def _reduce_cases(ops: _Ops, abc: tuple) -> list:
    zero = ops.zero
    calls = [(ops.fill(zero, (2, 0)), 1), (abc[0][:0], 0)]
    if abc[0].shape[0]:
        calls += [(np.stack(abc, axis=-1), -1), (np.stack(abc, axis=0), 0)]
    results = ops.reduce_many(calls)
    empty_all = results[1] if isinstance(results[1], Exception) else np.reshape(results[1], (1,))
    cases = [
        _case("empty axis", results[0], ops.fill(zero, (2,))),
        _case("empty array", empty_all, ops.fill(zero, (1,))),
    ]
    if abc[0].shape[0]:
        want, partials = ops.fold(abc)
        cases += [
            _case("axis=-1", results[2], want, abc, partials),
            _case("axis=0", results[3], want, abc, partials),
        ]
    return cases


__all__ = ["LAWS", "LawFailure", "LawReport", "check_laws"]
