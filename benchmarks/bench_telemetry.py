"""What telemetry costs the operations it measures (issue #13, Layer 6).

* ``timing_overhead_per_call``: a no-op function of a state wrapped by ``collective`` (the one
  place every shell operation is timed: two ``perf_counter`` calls and one histogram
  observation), against the same function called bare, in the same process. The difference
  is the timing overhead per operation; target: a few microseconds (<= 5 us).
* ``update_page_recording_overhead``: ``update_page`` of a 64-float page on a state with its
  telemetry, against the same state with a telemetry that records nothing (timing, write
  counts and histograms reduced to no-ops): what recording adds to the hot path.
* ``scrape_1000_pages``: one ``/metrics`` scrape (``get_stats`` + exposition) of a state of
  1000 pages with 999 dependencies, against ``get_stats`` alone: what the exporter adds
  (the HTTP round trip to the server thread and the text exposition); target <= 50 ms.

Every measurement interleaves the two sides (the machine is shared) and keeps the minimum of
the repeats; ranges are reported.
"""

from __future__ import annotations

import tempfile
import time
import urllib.request

import numpy as np

import mmsb_jax as mmsb
from mmsb_jax.shell._distributed import collective
from mmsb_jax.telemetry import Telemetry

from ._harness import result


class _NullTelemetry(Telemetry):
    """Records nothing: the baseline of what recording costs."""

    def observe(self, kind, seconds):
        pass

    def count_writes(self, pool, slots):
        pass


def _noop(state):
    return None


_timed_noop = collective("noop")(_noop)


def _per_call(fn, arg, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return (time.perf_counter() - t0) / n


def _timing_case(repeat: int, n: int) -> dict:
    s = mmsb.mmsb_start()
    try:
        timed, bare = [], []
        for _ in range(repeat):
            bare.append(_per_call(_noop, s, n))
            timed.append(_per_call(_timed_noop, s, n))
    finally:
        mmsb.mmsb_stop(s)
    t, b = min(timed), min(bare)
    over = (t - b) * 1e6
    return result(
        "timing_overhead_per_call", value=t * 1e6, unit="us per call (timed no-op)",
        baseline="the same no-op called bare (us)", baseline_value=b * 1e6, higher_is_better=False,
        target="timing adds <= 5 us per operation", met=over <= 5.0, overhead_us=over,
        range_us=[min(timed) * 1e6, max(timed) * 1e6], baseline_range_us=[min(bare) * 1e6, max(bare) * 1e6],
    )


def _update_case(repeat: int, n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        s = mmsb.mmsb_start(d + "/s", fsync="never")
        try:
            p = mmsb.create_page(s, size=64, dtype=np.float32).id
            rows = [np.full(64, k, np.float32) for k in range(2)]
            real, null = s._telemetry, _NullTelemetry()

            def writes():
                t0 = time.perf_counter()
                for k in range(n):
                    mmsb.update_page(s, p, rows[k & 1])
                return (time.perf_counter() - t0) / n

            writes()  # warm-up: compiles the diff program
            on, off = [], []
            for _ in range(repeat):
                s._telemetry = null
                off.append(writes())
                s._telemetry = real
                on.append(writes())
        finally:
            s._telemetry = real
            mmsb.mmsb_stop(s)
    v, b = min(on), min(off)
    over = (v - b) * 1e6
    return result(
        "update_page_recording_overhead", value=v * 1e6, unit="us per update_page (64 float32)",
        baseline="update_page with a telemetry that records nothing (us)", baseline_value=b * 1e6,
        higher_is_better=False, target="recording adds <= 5 us per update_page", met=over <= 5.0,
        overhead_us=over, range_us=[min(on) * 1e6, max(on) * 1e6], baseline_range_us=[min(off) * 1e6, max(off) * 1e6],
    )


def _scrape_case(repeat: int) -> dict:
    s = mmsb.mmsb_start(semiring="tropical")
    srv = mmsb.serve_metrics(s)
    try:
        ids = mmsb.create_pages(s, 1000, size=4, dtype=np.float32)
        mmsb.add_dependencies(s, ids[:-1], ids[1:])
        for k in range(20):
            mmsb.update_page(s, int(ids[k]), np.full(4, k + 1.0, np.float32))
        scrape, stats = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            mmsb.get_stats(s)
            stats.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            urllib.request.urlopen(srv.url, timeout=30).read()
            scrape.append(time.perf_counter() - t0)
    finally:
        srv.close()
        mmsb.mmsb_stop(s)
    v, b = min(scrape), min(stats)
    return result(
        "scrape_1000_pages", value=v * 1e3, unit="ms per /metrics scrape",
        baseline="get_stats alone (ms)", baseline_value=b * 1e3, higher_is_better=False,
        target="a scrape <= 50 ms (Prometheus scrapes every 15 s by default)", met=v <= 50e-3,
        range_ms=[min(scrape) * 1e3, max(scrape) * 1e3], baseline_range_ms=[min(stats) * 1e3, max(stats) * 1e3],
    )


def run(quick: bool) -> list[dict]:
    repeat = 3 if quick else 7
    return [
        _timing_case(repeat, 20_000 if quick else 200_000),
        _update_case(5 if quick else 41, 200),
        _scrape_case(repeat),
    ]
