"""PNG plots (matplotlib, Agg backend, imported on first use): ``mmsb report`` and ``mmsb bench --plot``.

:func:`state_report` draws, from a state directory's files: the epoch rate and the log's
growth over time (record timestamps and positions), the checkpoint timeline (manifests) and
the latency distributions of the telemetry snapshot. :func:`bench_plots` draws one chart per
benchmark module: each case's ratio to its baseline (log scale), coloured by whether its
target was met. Imports ``log`` and nothing above the telemetry package.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .._errors import InvalidArgumentError, SerializationError
from ..log import list_segments, read_records
from ._disk import checkpoint_figures
from ._histogram import Histogram
from ._snapshot import read_snapshot


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _out_dir(out) -> str:
    if not isinstance(out, (str, os.PathLike)):
        raise InvalidArgumentError(f"out={out!r} is not a directory path")
    out = os.fspath(out)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise InvalidArgumentError(f"out={out!r} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:  # e.g. a file where a parent directory would be
        raise InvalidArgumentError(f"out={out!r} cannot be made a directory: {e.strerror or e}") from None
    return out


def _save(fig, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def log_timeline(path: str) -> dict:
    """Per log record of the state at ``path``: ``time`` (s since the first), ``epoch``, ``pos``
    (bytes of log before it, over all live segments), and ``t0`` (Unix seconds of the first)."""
    log_dir = os.path.join(path, "log")
    if not os.path.isdir(log_dir):
        return {"time": np.zeros(0), "epoch": np.zeros(0, np.int64), "pos": np.zeros(0), "t0": None}
    base, acc = {}, 0
    for i, p in list_segments(log_dir):
        base[i] = acc
        acc += os.path.getsize(p)
    recs = read_records(log_dir, "skip_corrupt").records
    ts = np.array([r.timestamp for r in recs], np.float64) / 1e9
    t0 = float(ts[0]) if ts.size else None
    return {"time": ts - (t0 or 0.0), "epoch": np.array([r.epoch for r in recs], np.int64),
            "pos": np.array([base.get(r.segment, 0) + max(r.offset, 0) for r in recs], np.float64), "t0": t0,
            "log_bytes": acc}


def state_report(path: str, out) -> list[str]:
    """Write ``epoch_rate.png``, ``log_growth.png``, ``checkpoints.png`` and ``latency.png``
    for the state at ``path`` into ``out``; returns their paths.

    Raises:
      InvalidArgumentError: ``out`` is not a directory path.
      SerializationError: ``path`` holds no state.

    Example:
      >>> import tempfile, jax.numpy as jnp, mmsb_jax as mmsb
      >>> from mmsb_jax.telemetry._plots import state_report
      >>> d = tempfile.mkdtemp()
      >>> state = mmsb.mmsb_start(d + "/s")
      >>> p = mmsb.create_page(state, size=4, dtype=jnp.float32)
      >>> mmsb.mmsb_stop(state)
      >>> [os.path.basename(f) for f in state_report(d + "/s", d + "/report")]
      ['epoch_rate.png', 'log_growth.png', 'checkpoints.png', 'latency.png']
    """
    if not os.path.isdir(os.path.join(path, "log")) and not checkpoint_figures(path)["count"]:
        raise SerializationError(f"{path!r} holds no mmsb state (no log, no checkpoint)")
    out = _out_dir(out)
    plt = _pyplot()
    tl = log_timeline(path)
    files = []

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if tl["time"].size >= 2:
        span = max(float(tl["time"][-1]), 1e-3)
        bins = max(1, min(60, int(tl["epoch"].size)))
        first = np.unique(tl["epoch"], return_index=True)[1]  # one timestamp per epoch
        counts, edges = np.histogram(tl["time"][first], bins=bins, range=(0.0, span))
        ax.step(edges[:-1], counts / (span / bins), where="post")
        ax.set_xlabel("seconds since the first record")
        ax.set_ylabel("epochs / second")
    else:
        _note(ax, "fewer than two log records")
    ax.set_title("epoch rate")
    files.append(_save(fig, out, "epoch_rate.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if tl["time"].size:
        ax.plot(tl["time"], tl["pos"] / 1e6)
        ax.set_xlabel("seconds since the first record")
        ax.set_ylabel("log MB")
    else:
        _note(ax, "no log records")
    ax.set_title("log growth (live segments)")
    files.append(_save(fig, out, "log_growth.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ck = _checkpoint_times(path)
    if tl["time"].size:
        ax.plot(tl["time"], tl["epoch"], label="epoch")
    if ck:
        t0 = tl["t0"] if tl["t0"] is not None else min(t for t, _, _ in ck)
        for t, e, nbytes in ck:
            ax.axvline(t - t0, color="tab:red", alpha=0.6)
            ax.annotate(f"ckpt e{e}\n{nbytes / 1e6:.2g} MB", (t - t0, e), fontsize=7)
        ax.set_xlabel("seconds since the first record")
        ax.set_ylabel("epoch")
    elif not tl["time"].size:
        _note(ax, "no log records, no checkpoints")
    ax.set_title(f"checkpoint timeline ({len(ck)} checkpoints)")
    files.append(_save(fig, out, "checkpoints.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        snap = read_snapshot(path)
        why = "no telemetry snapshot (the state never closed or ran under a second)"
    except SerializationError as e:
        snap, why = None, f"telemetry snapshot refused:\n{e}"[:200]
    lat = (snap or {}).get("latency") or {}
    drawn = 0
    for op, summary in sorted(lat.items()):
        try:
            h = Histogram.from_summary(summary)
        except InvalidArgumentError:
            continue
        if not h.count:
            continue
        x = np.array(h.bounds + (h.bounds[-1] * 2.5,))
        ax.plot(x, np.array(h.counts) / h.count, marker=".", label=f"{op} (n={h.count})")
        drawn += 1
    if drawn:
        ax.set_xscale("log")
        ax.set_xlabel("seconds (bucket upper bound)")
        ax.set_ylabel("share of calls")
        ax.legend(fontsize=7, ncol=2)
    else:
        _note(ax, why)
    ax.set_title("latency distributions (telemetry snapshot)")
    files.append(_save(fig, out, "latency.png"))
    return files


def _checkpoint_times(path: str) -> list[tuple[float, int, int]]:
    from ..log._checkpoint import MANIFEST
    from ..log._directory import list_checkpoints
    from ._disk import dir_bytes

    out = []
    for d, e in list_checkpoints(path) if os.path.isdir(path) else []:
        if e >= 0:
            try:
                out.append((os.path.getmtime(os.path.join(d, MANIFEST)), e, dir_bytes(d)))
            except OSError:
                continue
    return sorted(out)


def bench_plots(results: list, out) -> list[str]:
    """One PNG per benchmark module (``bench_<module>.png``): each case's ratio to its
    baseline measured in the same run (log scale; > 1: better than the baseline), green where
    the target was met, red where missed; skipped cases are left out.

    Raises:
      InvalidArgumentError: ``results`` is not a list of result dicts (case, ratio, module).

    Example:
      >>> import tempfile
      >>> rows = [{"module": "bench_x", "case": "a", "ratio_vs_baseline": 2.0, "met": True,
      ...          "baseline": "numpy", "value": 1.0, "unit": "s", "baseline_value": 2.0}]
      >>> [os.path.basename(f) for f in bench_plots(rows, tempfile.mkdtemp())]
      ['bench_x.png']
    """
    if not isinstance(results, list) or not all(isinstance(r, dict) and "case" in r for r in results):
        raise InvalidArgumentError("results must be a list of benchmark result dicts (each with a 'case')")
    out = _out_dir(out)
    plt = _pyplot()
    families: dict[str, list] = {}
    for r in results:
        if r.get("skipped") or not isinstance(r.get("ratio_vs_baseline"), (int, float)):
            continue
        families.setdefault(str(r.get("module", "bench")), []).append(r)
    files = []
    for name, rows in sorted(families.items()):
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
        ratios = np.array([max(float(r["ratio_vs_baseline"]), 1e-6) if math.isfinite(r["ratio_vs_baseline"])
                           else 1e6 for r in rows])
        y = np.arange(len(rows))
        ax.barh(y, ratios, color=["tab:green" if r.get("met") else "tab:red" for r in rows])
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_yticks(y, [f"{r['case'][:60]}\nvs {str(r.get('baseline', ''))[:40]}" for r in rows], fontsize=7)
        ax.invert_yaxis()
        for yi, (r, q) in enumerate(zip(rows, ratios)):
            ax.annotate(f" {q:.3g}x ({r.get('value', float('nan')):.3g} vs {r.get('baseline_value', float('nan')):.3g}"
                        f" {r.get('unit', '')})", (q, yi), va="center", fontsize=7)
        ax.set_xlabel("times better than the baseline (same run; green: target met)")
        ax.set_title(name)
        files.append(_save(fig, out, f"{name}.png"))
    return files
