"""The records :func:`~mmsb_jax.semirings.check_laws` returns: :class:`LawFailure` and :class:`LawReport`."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, NamedTuple

import numpy as np

from .._errors import SemiringLawError

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



def _fmt(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
        return str(v.item() if v.dtype == np.bool_ else v)
    return str(v)


__all__ = ["LAWS", "LawFailure", "LawReport"]
