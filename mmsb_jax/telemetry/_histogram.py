"""A cheap latency histogram with fixed bucket bounds (Prometheus' cumulative ``le`` buckets).

``prometheus_client.Histogram.observe`` costs several microseconds (a lock and a value object
per bucket); this one costs a ``bisect`` and two additions, and is turned into a Prometheus
histogram family only when the endpoint is scraped. Imports nothing of mmsb_jax but the errors.
"""

from __future__ import annotations

import bisect
import threading

from .._errors import InvalidArgumentError

#: Default bounds (seconds): 1-2.5-5 per decade from 1 microsecond to 50 seconds.
LATENCY_BUCKETS: tuple[float, ...] = tuple(m * 10.0**e for e in range(-6, 2) for m in (1.0, 2.5, 5.0))


class Histogram:
    """Counts of observed values per bucket (``value <= bound``), their sum and count.

    Thread-safe (a lock around the two additions). ``counts[i]`` is the number of values in
    ``(bounds[i-1], bounds[i]]``; the last entry counts values above every bound (``+Inf``).

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

    __slots__ = ("bounds", "counts", "sum", "_lock")

    def __init__(self, bounds=LATENCY_BUCKETS):
        try:
            b = tuple(float(x) for x in bounds)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"bounds={bounds!r} must be a sequence of numbers") from None
        if not b or any(not (x < y) for x, y in zip(b, b[1:])) or any(x != x or abs(x) == float("inf") for x in b):
            raise InvalidArgumentError(f"bounds={bounds!r} must be non-empty, finite and strictly ascending")
        self.bounds = b
        self.counts = [0] * (len(b) + 1)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Count one value (seconds, bytes, ...)."""
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self.counts[i] += 1
            self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

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
        n = self.count
        if not n:
            return None
        rank, acc = q * n, 0
        for i, c in enumerate(self.counts):
            if c and acc + c >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lo = self.bounds[i - 1] if i else 0.0
                return lo + (self.bounds[i] - lo) * max(rank - acc, 0.0) / c
            acc += c
        return self.bounds[-1]  # pragma: no cover - rank <= n always lands above

    def summary(self) -> dict:
        """``count``, ``sum``, ``mean``, ``p50``, ``p90``, ``p99`` and the raw bucket counts."""
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
        h.counts, h.sum = list(counts), float(total)
        return h
