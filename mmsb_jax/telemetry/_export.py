"""Prometheus export: a collector over one state's figures, on a registry of its own.

The collector turns the dict ``get_stats(state)`` returns into metric families when the
endpoint is scraped (nothing is kept twice, and nothing costs anything between scrapes).
Names start with ``mmsb_``; counters end in ``_total``, durations in ``_seconds``, sizes in
``_bytes`` (the README's "Telemetry" section lists them). Imports nothing of mmsb_jax above the
telemetry package; the shell hands in a callable that returns the stats dict.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import start_wsgi_server

from .._checks import is_int
from .._errors import InvalidArgumentError
from ._histogram import Histogram

#: get_stats counter key -> (metric name, help)
COUNTERS = {
    "pages_created": ("mmsb_pages_created_total", "Pages created (state: survives reopen)"),
    "pages_deleted": ("mmsb_pages_deleted_total", "Pages deleted (state: survives reopen)"),
    "updates": ("mmsb_updates_total", "update_page calls that changed a page (state)"),
    "noop_updates": ("mmsb_noop_updates_total", "Writes that changed nothing (state)"),
    "deltas_routed": ("mmsb_deltas_routed_total", "Deltas routed, one per page per batch entry (state)"),
    "batches": ("mmsb_batches_total", "Batched writes (route_sparse_batch, batch_route_deltas) (state)"),
    "checkpoints": ("mmsb_checkpoints_total", "Checkpoints written (state)"),
}


class _StateCollector:
    """A prometheus collector over ``stats_fn()`` and the state's :class:`Telemetry`."""

    def __init__(self, stats_fn, telemetry):
        self.stats_fn = stats_fn
        self.telemetry = telemetry

    def collect(self):
        s = self.stats_fn()
        yield _gauge("mmsb_epoch", "Last committed epoch", s["epoch"])
        yield _gauge("mmsb_pages", "Live pages", s["pages"])
        yield _gauge("mmsb_live_bytes", "Bytes of live pages", s["bytes"])
        for key, (name, doc) in COUNTERS.items():
            c = CounterMetricFamily(name, doc)
            c.add_metric([], s[key])
            yield c
        ops = HistogramMetricFamily("mmsb_operation_seconds", "Wall time of shell operations (since open)",
                                    labels=["operation"])
        for op, h in sorted(self.telemetry.ops.items()):
            ops.add_metric([op], _buckets(h), h.sum)
        yield ops
        fs = HistogramMetricFamily("mmsb_log_fsync_seconds", "fdatasync time of the log's segment files (since open)")
        fs.add_metric([], _buckets(self.telemetry.fsync), self.telemetry.fsync.sum)
        yield fs
        yield from _pools(s["pools"], s["cost"]["pools"])
        yield from _propagation(s["propagation"])
        yield from _log(s["log"])
        yield from _checkpoints(s["checkpoint_files"])
        cost = s["cost"]
        for key, name, doc in (
            ("tail_bytes", "mmsb_replay_tail_bytes", "Log bytes since the newest checkpoint"),
            ("tail_records", "mmsb_replay_tail_records", "Log records since the newest checkpoint"),
            ("replay_seconds", "mmsb_replay_expected_seconds", "Expected reopen replay time (cost model)"),
            ("full_pass_seconds", "mmsb_propagation_full_expected_seconds", "Mean full pass (cost model)"),
            ("incremental_pass_seconds", "mmsb_propagation_incremental_expected_seconds",
             "Mean incremental pass (cost model)"),
            ("memory_overhead", "mmsb_memory_overhead_ratio", "Arena capacity bytes / live bytes - 1"),
        ):
            if cost.get(key) is not None:
                yield _gauge(name, doc, cost[key])
        ent = GaugeMetricFamily("mmsb_write_entropy_ratio", "Normalised entropy of where writes land",
                                labels=["over"])
        for over in ("pages", "pools"):
            v = cost[f"write_entropy_{over}"]
            if v is not None:
                ent.add_metric([over], v)
        yield ent
        ch = CounterMetricFamily("mmsb_propagation_choices_total", "Passes the propagation strategy chose",
                                 labels=["choice"])
        for choice, n in s["adaptive"]["propagation"]["chosen"].items():
            ch.add_metric([choice], n)
        yield ch


def _gauge(name, doc, value, labels=None, label_values=None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    g.add_metric(label_values or [], float(value))
    return g


def _buckets(h: Histogram):
    return [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.cumulative()]


def _pools(pools, costs):
    fams = {
        "pages": GaugeMetricFamily("mmsb_pool_pages", "Live pages per pool", labels=["pool"]),
        "capacity_bytes": GaugeMetricFamily("mmsb_pool_capacity_bytes", "Arena bytes per pool", labels=["pool"]),
        "pressure": GaugeMetricFamily("mmsb_pool_pressure_ratio", "Live pages / arena slots", labels=["pool"]),
        "fragmentation": GaugeMetricFamily("mmsb_pool_fragmentation_ratio", "Free slots below the high-water mark "
                                           "/ used slots", labels=["pool"]),
        "gather_locality": GaugeMetricFamily("mmsb_pool_gather_locality_ratio", "1 - normalised mean slot "
                                             "distance of dependencies", labels=["pool"]),
    }
    for i, (p, c) in enumerate(zip(pools, costs)):
        for key in ("pages", "capacity_bytes", "pressure"):
            fams[key].add_metric([str(i)], float(p[key]))
        fams["fragmentation"].add_metric([str(i)], c["fragmentation"])
        if c.get("gather_locality") is not None:
            fams["gather_locality"].add_metric([str(i)], c["gather_locality"])
    yield from fams.values()


def _propagation(p):
    passes = CounterMetricFamily("mmsb_propagation_passes_total", "Propagation passes", labels=["kind"])
    nodes = CounterMetricFamily("mmsb_propagation_nodes_total", "Graph nodes covered by passes", labels=["kind"])
    for kind in ("full", "incremental"):
        passes.add_metric([kind], p[f"{kind}_passes"])
        nodes.add_metric([kind], p[f"{kind}_nodes"])
    yield passes
    yield nodes
    for key, name, doc in (
        ("full_edges", "mmsb_propagation_edges_total", "Edges covered by full passes"),
        ("full_rounds", "mmsb_propagation_rounds_total", "Program steps (levels) of full passes"),
        ("incremental_dirty", "mmsb_propagation_dirty_nodes_total", "Dirty nodes incremental passes started from"),
        ("incremental_changed", "mmsb_propagation_changed_nodes_total", "Nodes incremental passes changed (cone)"),
    ):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], p[key])
        yield c
    if p["cutoff_rate"] is not None:
        yield _gauge("mmsb_propagation_cutoff_ratio", "Share of the graph incremental passes left unchanged",
                     p["cutoff_rate"])


def _log(log):
    if not log:
        return
    for key, name, doc, kind in (
        ("bytes", "mmsb_log_bytes", "Bytes of the log's segment files", "gauge"),
        ("records", "mmsb_log_records", "Records in the log", "gauge"),
        ("segments", "mmsb_log_segments", "Segment files of the log", "gauge"),
        ("fsyncs", "mmsb_log_fsyncs_total", "fdatasync calls of this writer", "counter"),
        ("appends", "mmsb_log_appends_total", "Appends of this writer", "counter"),
    ):
        if log.get(key) is not None:
            if kind == "gauge":
                yield _gauge(name, doc, log[key])
            else:
                c = CounterMetricFamily(name, doc)
                c.add_metric([], log[key])
                yield c


def _checkpoints(ck):
    yield _gauge("mmsb_checkpoints_on_disk", "Checkpoints in the state directory", ck["count"])
    if ck["newest_epoch"] is not None:
        yield _gauge("mmsb_checkpoint_newest_epoch", "Epoch of the newest checkpoint", ck["newest_epoch"])
    if ck["newest_bytes"] is not None:
        yield _gauge("mmsb_checkpoint_newest_bytes", "Bytes of the newest checkpoint", ck["newest_bytes"])
    if ck["newest_age_seconds"] is not None:
        yield _gauge("mmsb_checkpoint_age_seconds", "Seconds since the newest checkpoint was written",
                     ck["newest_age_seconds"])


def registry_for(telemetry, stats_fn) -> CollectorRegistry:
    """The state's own ``CollectorRegistry`` (made once, kept on ``telemetry.registry``; never
    the global one, so several states in one process do not clash)."""
    if telemetry.registry is None:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(_StateCollector(stats_fn, telemetry))
        telemetry.registry = reg
    return telemetry.registry


class MetricsServer:
    """A running ``/metrics`` endpoint (``.port``, ``.addr``, ``.url``, ``.close()``).

    Example:
      >>> from prometheus_client import CollectorRegistry
      >>> srv = serve_registry(CollectorRegistry(), port=0)
      >>> srv.port > 0
      True
      >>> srv.close()
    """

    def __init__(self, httpd, thread):
        self._httpd, self._thread = httpd, thread
        self.addr, self.port = httpd.server_address[:2]

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"MetricsServer({self.url!r}{', closed' if self._httpd is None else ''})"


def serve_registry(registry, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` over HTTP at ``addr:port`` (``port=0``: a free port) in a daemon thread.

    Raises:
      InvalidArgumentError: ``port`` not an int in ``0..65535``, ``addr`` not a str, or the
        address cannot be bound (in use, not local), naming both.
    """
    if not is_int(port) or not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port={port!r} must be an int in 0..65535 (0: any free port)")
    if not isinstance(addr, str) or not addr:
        raise InvalidArgumentError(f"addr={addr!r} must be a host name or IP address (str)")
    try:
        httpd, thread = start_wsgi_server(int(port), addr=addr, registry=registry)
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"cannot serve metrics on addr={addr!r} port={port}: {e}") from None
    return MetricsServer(httpd, thread)
