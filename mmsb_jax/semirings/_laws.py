"""Law checks: does a :class:`Semiring` record really define a semiring?

:func:`check_laws` evaluates every semiring law on all triples of a few sample values and
returns a :class:`LawReport` naming each law that failed and the values it failed on. It is
meant for tests (with hypothesis-generated samples) and for checking a user-defined record
before handing it to the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InvalidArgumentError, SemiringLawError
from ._base import Semiring

Array = Any

#: Every law :func:`check_laws` knows, with the identity it checks (read-only).
LAWS = types.MappingProxyType(
    {
        "add_associative": "(a ⊕ b) ⊕ c == a ⊕ (b ⊕ c)",
        "add_commutative": "a ⊕ b == b ⊕ a",
        "mul_associative": "(a ⊗ b) ⊗ c == a ⊗ (b ⊗ c)",
        "mul_commutative": "a ⊗ b == b ⊗ a",
        "left_distributive": "a ⊗ (b ⊕ c) == (a ⊗ b) ⊕ (a ⊗ c)",
        "right_distributive": "(a ⊕ b) ⊗ c == (a ⊗ c) ⊕ (b ⊗ c)",
        "add_identity": "zero ⊕ a == a == a ⊕ zero",
        "mul_identity": "one ⊗ a == a == a ⊗ one",
        "zero_annihilates": "zero ⊗ a == zero == a ⊗ zero",
        "add_idempotent": "a ⊕ a == a",
        "segment_reduce_fold": "segment_reduce == ((zero ⊕ x0) ⊕ x1) ⊕ ... per segment (zero when empty)",
        "reduce_fold": "reduce(x, axis) == ((zero ⊕ x0) ⊕ x1) ⊕ ... along axis (zero when empty)",
    }
)

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


class LawFailure(NamedTuple):
    """One instance of a law that does not hold.

    Attributes:
      law: the law's name, a key of :data:`LAWS` (e.g. ``"add_associative"``).
      values: the offending sample values ``(a,)``, ``(a, b)`` or ``(a, b, c)`` as NumPy
        scalars of the carrier dtype (``()`` for a check on empty input or one that raised).
      lhs: the law's left side at those values (a NumPy scalar), or ``None``.
      rhs: the law's right side, or ``None``.
      detail: which variant failed (e.g. ``"a ⊕ zero"``, ``"empty axis"``,
        ``"empty segment among others"``) or the error raised while evaluating the law.
    """

    law: str
    values: tuple
    lhs: Any
    rhs: Any
    detail: str = ""

    def __str__(self) -> str:
        return self.describe()

    def describe(self, with_law: bool = True) -> str:
        """One line: the law (optional), the variant, the values and both sides."""
        names = "abc"
        at = ", ".join(f"{names[i]}={_fmt(v)}" for i, v in enumerate(self.values))
        parts = [self.law] if with_law else []
        if self.detail:
            parts.append(f"[{self.detail}]")
        if at:
            parts.append(f"at {at}")
        text = " ".join(parts) or "at no values"
        if self.lhs is not None or self.rhs is not None:
            text += f": {_fmt(self.lhs)} != {_fmt(self.rhs)}"
        return text


@dataclasses.dataclass(frozen=True)
class LawReport:
    """The result of :func:`check_laws`.

    Attributes:
      semiring: the checked record's name.
      num_samples: how many sample values were used (laws hold on all their triples).
      dtype: the carrier dtype of the samples, as a string.
      checked: the names of the laws that were checked.
      skipped: laws not checked because the record's tags do not claim them
        (``mul_commutative`` unless ``commutative``, ``add_idempotent`` unless ``idempotent``).
      failures: up to ``max_failures`` :class:`LawFailure` per failed law (and at least one
        per failing variant, e.g. ``"empty axis"``).
      counts: ``{law: number of failing instances}`` for every failed law (not truncated).

    Example:
      >>> import jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> minus = semirings.REAL._replace(name="minus", add=jnp.subtract)
      >>> report = semirings.check_laws(minus, [0.0, 1.0, 2.0])
      >>> report.ok, report.failed_laws[:2]
      (False, ('add_associative', 'add_commutative'))
      >>> print(report.failures_of("add_commutative")[0])
      add_commutative at a=0.0, b=1.0: -1.0 != 1.0
      >>> try:
      ...     report.raise_if_failed()
      ... except semirings.SemiringLawError as err:
      ...     print(err.report is report, str(err).splitlines()[0])
      True semiring 'minus' on 3 samples (float32): 5 of 11 laws FAIL (not claimed by its tags: add_idempotent)
    """

    semiring: str
    num_samples: int
    dtype: str
    checked: tuple
    skipped: tuple
    failures: tuple
    counts: dict

    @property
    def ok(self) -> bool:
        """True when every checked law holds on every sample."""
        return not self.failures

    @property
    def failed_laws(self) -> tuple:
        """The names of the laws that failed, in :data:`LAWS` order."""
        return tuple(law for law in self.checked if law in self.counts)

    def failures_of(self, law: str) -> tuple:
        """The recorded :class:`LawFailure` instances of one law."""
        return tuple(f for f in self.failures if f.law == law)

    def raise_if_failed(self) -> LawReport:
        """Raise :class:`~mmsb_jax.SemiringLawError` (carrying this report) unless :attr:`ok`.

        Returns:
          this report, when every law holds (so calls can be chained).
        """
        if not self.ok:
            raise SemiringLawError(str(self), report=self)
        return self

    def __str__(self) -> str:
        head = f"semiring {self.semiring!r} on {self.num_samples} samples ({self.dtype})"
        skipped = f" (not claimed by its tags: {', '.join(self.skipped)})" if self.skipped else ""
        if self.ok:
            return f"{head}: all {len(self.checked)} laws hold{skipped}"
        lines = [f"{head}: {len(self.failed_laws)} of {len(self.checked)} laws FAIL{skipped}"]
        for law in self.failed_laws:
            shown = self.failures_of(law)
            lines.append(f"  {law}: {LAWS.get(law, '')} fails in {self.counts[law]} case(s), e.g.")
            lines.extend(f"    {f.describe(with_law=False)}" for f in shown)
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def _fmt(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
        return str(v.item() if v.dtype == np.bool_ else v)
    return str(v)


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
    both sides; ``zero`` annihilates under ⊗; ``a ⊕ a == a`` when tagged ``idempotent``;
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
      exact: ``None`` (default): the ⊕-only laws of an idempotent semiring (min, max, or:
        no rounding) and every law on bool carriers are checked exactly, the rest with the
        tolerance; ``True``: every law exactly; ``False``: every law with the tolerance.
      dtype: the carrier dtype to cast ``samples`` to (default: theirs; bool for
        ``dtype_kind == "bool"``; float32 for integer samples).
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

    laws = [law for law in LAWS if _claimed(semiring, law)]
    skipped = tuple(law for law in LAWS if law not in laws)
    failures, counts = [], {}
    ops, abc = _Ops(semiring, x.dtype), _triples(x)
    for law in laws:
        law_exact = exact if exact is not None else (semiring.idempotent and law in _ADD_ONLY)
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
    x = jnp.asarray(samples) if dtype is None else jnp.asarray(samples, dtype=dtype)
    if dtype is None:
        if semiring.dtype_kind == "bool":
            x = x.astype(jnp.bool_)
        elif not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
    x = x.reshape(-1)
    if not semiring.accepts(x.dtype):
        raise InvalidArgumentError(
            f"check_laws: samples of dtype {x.dtype} are not valid carriers for semiring "
            f"{semiring.name!r} (dtype_kind={semiring.dtype_kind!r})"
        )
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


def _jit_many(fn: Callable, statics: tuple) -> Callable:
    def run(arg_sets):
        return tuple(fn(*args, static) for args, static in zip(arg_sets, statics))

    try:
        return _jitted_many(fn, statics)
    except TypeError:  # an unhashable callable
        return jax.jit(run)


@functools.lru_cache(maxsize=512)
def _jitted_many(fn: Callable, statics: tuple) -> Callable:
    def run(arg_sets):
        return tuple(fn(*args, static) for args, static in zip(arg_sets, statics))

    return jax.jit(run)


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
        acc = self.fill(self.semiring.zero, columns[0].shape)
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
    semiring, add, mul = ops.semiring, ops.add, ops.mul
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
        zero = ops.fill(semiring.zero, a.shape)
        one = ops.fill(semiring.one, a.shape)
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
    zero = ops.semiring.zero
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
    zero = ops.semiring.zero
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
