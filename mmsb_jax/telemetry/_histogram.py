"""A cheap latency histogram with fixed bucket bounds (Prometheus' cumulative ``le`` buckets).

``prometheus_client.Histogram.observe`` takes a lock and updates a value object per bucket;
this one appends the value to a deque (about 0.1 us) and folds values into bucket counts in
vectorized batches; it becomes a Prometheus histogram family only when the endpoint is
scraped. Imports nothing of mmsb_jax but the errors.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from .._errors import InvalidArgumentError

#: Default bounds (seconds): 1-2.5-5 per decade from 1 microsecond to 50 seconds.
LATENCY_BUCKETS: tuple[float, ...] = tuple(m * 10.0**e for e in range(-6, 2) for m in (1.0, 2.5, 5.0))


class Histogram:
    """Counts of observed values per bucket (``value <= bound``), their sum and count.

    Thread-safe without a lock on the hot path: :meth:`observe` appends to a ``deque``
    (atomic in CPython); the values are folded into the bucket counts (one vectorized
    ``searchsorted``) every 4096 observations and whenever the counts are read.
    ``counts[i]`` is the number of values in ``(bounds[i-1], bounds[i]]``; the last entry
    counts values above every bound (``+Inf``).

    Args:
      bounds: ascending finite bucket bounds (default :data:`LATENCY_BUCKETS`).

    Raises:
      InvalidArgumentError: ``bounds`` empty, not ascending or not finite numbers.

    Example:
      >>> h = Histogram((0.1, 1.0))
      >>> for v in (0.05, 0.5, 0.7, 3.0):
      ...     h.observe(v)
      >>> h.count, h.counts, round(h.sum, 2)
      (4, [1, 2, 1], 4.25)
      >>> h.cumulative()
      [(0.1, 1), (1.0, 3), (inf, 4)]
      >>> round(h.quantile(0.5), 3)
      0.55
    """

    __slots__ = ("bounds", "_bounds", "_counts", "_sum", "_pending", "_lock")

    _FOLD_EVERY = 4096

    def __init__(self, bounds=LATENCY_BUCKETS):
        try:
            b = tuple(float(x) for x in bounds)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"bounds={bounds!r} must be a sequence of numbers") from None
        if not b or any(not (x < y) for x, y in zip(b, b[1:])) or any(x != x or abs(x) == float("inf") for x in b):
            raise InvalidArgumentError(f"bounds={bounds!r} must be non-empty, finite and strictly ascending")
        self.bounds = b
        self._bounds = np.asarray(b)
        self._counts = np.zeros(len(b) + 1, np.int64)
        self._sum = 0.0
        self._pending = collections.deque()
        self._lock = threading.Lock()  # taken by folds only

    def observe(self, value: float) -> None:
        """Count one value (seconds, bytes, ...)."""
        q = self._pending
        q.append(value)
        if len(q) >= self._FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        with self._lock:
            q = self._pending
            n = len(q)  # values appended meanwhile stay for the next fold
            if not n:
                return
            vals = np.fromiter((q.popleft() for _ in range(n)), np.float64, n)
            self._counts += np.bincount(np.searchsorted(self._bounds, vals, side="left"),
                                        minlength=self._counts.shape[0])
            self._sum += float(vals.sum())

    @property
    def counts(self) -> list[int]:
        """Values per bucket (the last: above every bound)."""
        self._fold()
        return self._counts.tolist()

    @property
    def sum(self) -> float:
        self._fold()
        return self._sum

    @property
    def count(self) -> int:
        self._fold()
        return int(self._counts.sum())

    @property
    def mean(self) -> float | None:
        """The mean observed value, or ``None`` before the first."""
        n = self.count
        return self.sum / n if n else None

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(bound, values <= bound), ...]`` ending with ``(inf, count)`` (Prometheus' buckets)."""
        out, acc = [], 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts):
            acc += c
            out.append((bound, acc))
        return out

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile, interpolated linearly inside its bucket (as PromQL's
        ``histogram_quantile``); ``None`` before the first value. Values above the last bound
        report that bound.

        Raises:
          InvalidArgumentError: ``q`` outside ``[0, 1]``.
        """
        if not 0.0 <= q <= 1.0:
            raise InvalidArgumentError(f"q={q!r} must lie in [0, 1]")
        counts = self.counts
        n = sum(counts)
        if not n:
            return None
        rank, acc = q * n, 0
        for i, c in enumerate(counts):
            if c and acc + c >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lo = self.bounds[i - 1] if i else 0.0
                return lo + (self.bounds[i] - lo) * max(rank - acc, 0.0) / c
            acc += c
        return self.bounds[-1]  # pragma: no cover - rank <= n always lands above

    def summary(self) -> dict:
        """``count``, ``sum``, ``mean``, ``p50``, ``p90``, ``p99`` and the raw bucket counts."""
        self._fold()
        return {"count": self.count, "sum": self.sum, "mean": self.mean, "p50": self.quantile(0.5),
                "p90": self.quantile(0.9), "p99": self.quantile(0.99), "bounds": list(self.bounds),
                "counts": list(self.counts)}

    @classmethod
    def from_summary(cls, d) -> "Histogram":
        """The histogram a :meth:`summary` describes (as read back from a snapshot file).

        Raises:
          InvalidArgumentError: ``d`` is not such a summary (bounds, counts and sum that fit).

        Example:
          >>> h = Histogram((1.0,)); h.observe(0.5)
          >>> Histogram.from_summary(h.summary()).counts
          [1, 0]
        """
        if not isinstance(d, dict) or not isinstance(d.get("counts"), list):
            raise InvalidArgumentError(f"{d!r} is not a histogram summary (bounds, counts, sum)")
        h = cls(d.get("bounds", ()))
        counts, total = d["counts"], d.get("sum")
        if (len(counts) != len(h.counts) or not all(type(c) is int and c >= 0 for c in counts)
                or not isinstance(total, (int, float))):
            raise InvalidArgumentError(f"histogram summary counts={counts!r}, sum={total!r} do not fit its bounds")
        h._counts, h._sum = np.asarray(counts, np.int64), float(total)
        return h
