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
    **extra,
) -> dict:
    """One benchmark row. ``ratio`` is always 'how many times better than the baseline'."""
    if higher_is_better:
        ratio = value / baseline_value if baseline_value else float("inf")
    else:
        ratio = baseline_value / value if value else float("inf")
    return {
        "case": case,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio_vs_baseline": ratio,
        "higher_is_better": higher_is_better,
        "target": target,
        "met": bool(met),
        **extra,
    }
