"""Shared helpers for benchmark cases.

A benchmark module exposes ``run(quick: bool) -> list[dict]``; each dict is made by
:func:`result` and says what was measured, its baseline measured in the same process, the
ratio and whether the issue's target was met. ``mmsb bench`` prints them and writes JSON.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable


def timeit(fn: Callable[[], object], *, repeat: int = 5, number: int = 1, warmup: int = 1) -> dict:
    """Time ``fn`` (which must block on its own result); returns seconds per call stats."""
    for _ in range(warmup):
        fn()
    samples = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - t0) / number)
    finally:
        if gc_was:
            gc.enable()
    return {"min": min(samples), "median": statistics.median(samples), "samples": samples}


def result(
    case: str,
    *,
    value: float,
    unit: str,
    baseline: str,
    baseline_value: float,
    higher_is_better: bool,
    target: str,
    met: bool,
    ratio_as: str = "faster",
    baseline_unit: str | None = None,
    **extra,
) -> dict:
    """One benchmark row.

    ``ratio_vs_baseline`` is always 'how many times faster (better) than the baseline'.
    ``ratio`` / ``ratio_means`` say the ratio in the words of the case's target: with
    ``ratio_as="faster"`` (default) it is ``ratio_vs_baseline`` ("x faster"); with
    ``ratio_as="time"`` it is ``value / baseline_value`` ("x the baseline's time", for
    targets such as "<= 3x the numpy time"); ``ratio_as="size"`` the same quotient for values
    that are not times ("x the baseline", e.g. bytes); ``ratio_as="none"``: no ratio (a
    count against a target of 0, or a baseline in another unit), shown as "-". ``unit``
    applies to ``value`` and, unless ``baseline_unit`` says otherwise, ``baseline_value``.
    """
    if ratio_as not in ("faster", "time", "size", "none"):
        raise ValueError(f"ratio_as={ratio_as!r}")
    if higher_is_better:
        ratio = value / baseline_value if baseline_value else float("inf")
    else:
        ratio = baseline_value / value if value else float("inf")
    if ratio_as == "none":
        ratio = shown = None
        means = "no ratio"
    elif ratio_as in ("time", "size"):
        shown = value / baseline_value if baseline_value else float("inf")
        means = "x the baseline's time" if ratio_as == "time" else "x the baseline"
    else:
        shown, means = ratio, "x faster than the baseline"
    return {
        "case": case,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "baseline_unit": unit if baseline_unit is None else baseline_unit,
        "ratio_vs_baseline": ratio,
        "ratio": shown,
        "ratio_means": means,
        "higher_is_better": higher_is_better,
        "target": target,
        "met": bool(met),
        **extra,
    }
