"""Layer 5's propagation strategy: after a write, an incremental or a full pass, chosen by cost.

Both passes give the same values bit for bit where the shell lets the choice be made (the
idempotent semirings: min / max / or, see :func:`mmsb_jax.graph.propagate_incremental`);
under the others the shell always runs a full pass (replay must reproduce live values to
the last bit), and the strategy only records why.

Rule (``mode="cost"``): each choice's cost is the median of its last 16 measured passes
(seconds, measured to completion; the first pass on a newly compiled graph may include
compiling and only bounds the cost); the cheaper one runs. The dearer one is re-measured once
the time spent on the cheaper one since it last ran reaches 8x its estimate, so exploring
costs at most ~1/8 of the time the chosen passes take. ``mode="fixed"`` is the rule from before
the policy: incremental whenever it is exact. Imports nothing of mmsb_jax but the errors.
"""

from __future__ import annotations

import collections
import statistics

from .._errors import InvalidArgumentError

MODES = ("cost", "fixed")
_WINDOW = 16
_EXPLORE = 8.0


class PropagationStrategy:
    """Chooses the pass after each write of a pool with dependencies; counts what and why.

    Args:
      mode: ``"cost"`` (the cost model decides where both passes are exact) or ``"fixed"``
        (the policy off: incremental whenever exact).

    Raises:
      InvalidArgumentError: an unknown ``mode``.

    Example:
      >>> s = PropagationStrategy()
      >>> s.choose(exact=True, have_values=True)   # nothing measured yet: try incremental
      'incremental'
      >>> s.record("incremental", 0.010); s.record("full", 0.001)
      >>> s.choose(exact=True, have_values=True)
      'full'
      >>> s.choose(exact=False, have_values=True)
      'full'
      >>> s.report()["chosen"]
      {'full': 2, 'incremental': 1}
    """

    def __init__(self, mode: str = "cost"):
        self.mode = check_mode(mode)
        self.chosen = {"full": 0, "incremental": 0}
        self.reasons: dict[str, int] = {}
        self.last: str | None = None
        self._samples = {"full": collections.deque(maxlen=_WINDOW), "incremental": collections.deque(maxlen=_WINDOW)}
        self._spent_since = {"full": 0.0, "incremental": 0.0}  # time on the other choice since this one ran
        self._bound: dict[str, float] = {}  # seconds of a warm-up pass (compiling included) per choice

    def estimate(self, choice: str) -> float | None:
        """The expected seconds of a ``choice`` pass (median of its recent passes), or ``None``."""
        s = self._samples[choice]
        return statistics.median(s) if s else None

    def choose(self, *, exact: bool, have_values: bool) -> str:
        """``"incremental"`` or ``"full"`` for the next pass. ``exact``: an incremental pass
        would be bit-exact (idempotent semiring); ``have_values``: there are propagated values
        of the pool's current size to update."""
        if not have_values:
            return self._pick("full", "no propagated values of this size yet")
        if not exact:
            return self._pick("full", "semiring not idempotent: only full passes replay bit-exactly")
        if self.mode == "fixed":
            return self._pick("incremental", "policy off: incremental whenever exact")
        inc, full = self.estimate("incremental"), self.estimate("full")
        if inc is None:
            return self._pick("incremental", "exploring: incremental not measured yet")
        if full is None:  # only a first (compiling) full pass ran: its time bounds the cost
            bound = self._bound.get("full")
            if bound is not None and self._spent_since["full"] >= _EXPLORE * bound:
                return self._pick("full", "exploring: full not measured yet")
            return self._pick("incremental", "full not measured yet: incremental")
        best, other = ("incremental", "full") if inc <= full else ("full", "incremental")
        if self._spent_since[other] >= _EXPLORE * (full if other == "full" else inc):
            return self._pick(other, f"exploring: re-measuring {other} (at most 1/{_EXPLORE:g} of the time)")
        return self._pick(best, f"cost model: {best} cheaper")

    def _pick(self, choice: str, reason: str) -> str:
        self.chosen[choice] += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.last = reason
        return choice

    def record(self, choice: str, seconds: float, *, warmup: bool = False) -> None:
        """A ``choice`` pass took ``seconds`` (to completion). ``warmup``: the first pass on a
        newly compiled graph (it may include compiling): an upper bound, not a sample."""
        if warmup:
            self._bound[choice] = seconds
        else:
            self._samples[choice].append(seconds)
        other = "full" if choice == "incremental" else "incremental"
        self._spent_since[choice] = 0.0
        self._spent_since[other] += seconds

    def report(self) -> dict:
        """``mode``, ``chosen`` counts, ``reasons`` counts, the ``last`` reason and the
        current ``estimate_seconds`` of each pass."""
        return {"mode": self.mode, "chosen": dict(self.chosen), "reasons": dict(self.reasons), "last": self.last,
                "estimate_seconds": {c: self.estimate(c) for c in ("full", "incremental")}}


def check_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise InvalidArgumentError(f"propagation policy {mode!r} is not one of {MODES}")
    return mode
