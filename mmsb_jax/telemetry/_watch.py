"""What ``mmsb stats PATH`` shows from a second process, and its live view (``--watch``, rich).

A second process cannot see a live state's memory: :func:`files_stats` combines what the
state's files say (log bytes / records / segments, checkpoints and their ages, the replay
tail) with the telemetry snapshot the live state writes (counters, latencies, propagation,
strategy); a damaged snapshot is refused and reported, and the rest still shown.
:func:`url_stats` reads a live ``/metrics`` endpoint instead. Imports ``log`` and nothing
above the telemetry package.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

from .._errors import InvalidArgumentError, SerializationError
from ._disk import checkpoint_figures, log_figures
from ._snapshot import read_snapshot
from ._tail import files_tail


def files_stats(path: str) -> dict:
    """``log``, ``checkpoint_files``, ``tail`` (from the files), ``telemetry`` (the snapshot,
    or ``None``) and ``telemetry_error`` (why the snapshot was refused, or ``None``).

    Raises:
      SerializationError: ``path`` is not a directory.

    Example:
      >>> import tempfile
      >>> s = files_stats(tempfile.mkdtemp())
      >>> s["log"]["records"], s["telemetry"], s["tail"]["bytes"]
      (0, None, 0)
    """
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        raise SerializationError(f"path={path!r} is not a state directory")
    path = os.fspath(path)
    ck = checkpoint_figures(path)
    try:
        snap, error = read_snapshot(path), None
    except SerializationError as e:
        snap, error = None, str(e)
    out = {"path": path, "log": log_figures(path), "checkpoint_files": ck,
           "tail": files_tail(path, ck["newest_epoch"] or 0), "telemetry": snap, "telemetry_error": error}
    if snap is not None:
        out["telemetry_age_seconds"] = max(0.0, time.time() - float(snap.get("written_at", 0.0)))
    return out


def url_stats(url: str, timeout: float = 5.0) -> dict:
    """The samples of a Prometheus endpoint: ``{sample name with labels: value}``.

    Raises:
      InvalidArgumentError: ``url`` is not an http(s) URL, or cannot be fetched (named).
    """
    from prometheus_client.parser import text_string_to_metric_families

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidArgumentError(f"url={url!r} is not an http:// or https:// URL")
    try:
        text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InvalidArgumentError(f"cannot read metrics from url={url!r}: {e}") from None
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _fmt_s(x) -> str:
    if x is None:
        return "-"
    return f"{x * 1e6:.1f} us" if x < 1e-3 else f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


def render(stats: dict, title: str):
    """A rich renderable of :func:`files_stats` (or, with a ``metrics`` key, of :func:`url_stats`)."""
    from rich.console import Group
    from rich.table import Table

    if "metrics" in stats:
        t = Table(title=title)
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in stats["metrics"].items():
            t.add_row(k, f"{v:.6g}")
        return t
    log, ck, tail, snap = stats["log"], stats["checkpoint_files"], stats["tail"], stats["telemetry"]
    files = Table(title=title)
    files.add_column("what")
    files.add_column("value", justify="right")
    rows = [
        ("epochs in the log", f"{log['first_epoch']} .. {log['last_epoch']}"),
        ("log", f"{log['bytes']:,} B, {log['records']:,} records, {log['segments']} segments"),
        ("checkpoints", f"{ck['count']} (newest epoch {ck['newest_epoch']}, "
                        f"{(ck['newest_bytes'] or 0):,} B, {_fmt_s(ck['newest_age_seconds'])} old)"),
        ("replay tail", f"{tail['bytes']:,} B, {tail['records']:,} records"),
    ]
    if snap is not None:
        rows.append(("telemetry snapshot", f"epoch {snap['epoch']}, {_fmt_s(stats.get('telemetry_age_seconds'))} old, "
                                           f"pid {snap.get('pid')}"))
        rows += [(k, f"{v:,}") for k, v in sorted((snap.get("counters") or {}).items())]
        rep = (snap.get("adaptive") or {}).get("propagation") or {}
        if rep:
            rows.append(("propagation choices", ", ".join(f"{k} {v}" for k, v in rep.get("chosen", {}).items())))
    else:
        rows.append(("telemetry snapshot", stats["telemetry_error"] or "none yet"))
    for k, v in rows:
        files.add_row(k, str(v))
    parts = [files]
    lat = (snap or {}).get("latency") or {}
    if lat:
        t = Table(title="latency (since the live state opened)")
        for col in ("operation", "count", "mean", "p50", "p90", "p99"):
            t.add_column(col, justify="left" if col == "operation" else "right")
        for op, h in sorted(lat.items()):
            t.add_row(op, f"{h['count']:,}", *(_fmt_s(h.get(k)) for k in ("mean", "p50", "p90", "p99")))
        parts.append(t)
    return Group(*parts)
