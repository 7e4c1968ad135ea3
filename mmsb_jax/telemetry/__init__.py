"""Layer 6 (utility): telemetry, cost model, entropy, Prometheus export and plots.

What a state measures about itself while it runs: latency histograms per operation
(:class:`Histogram`, kept by :class:`Telemetry`), propagation figures, fsync latencies, write
counts per page; the cost model and entropy computed from them (:mod:`._cost`); the
Prometheus endpoint (:func:`serve_registry`, behind ``mmsb.serve_metrics``, on the state's own ``CollectorRegistry``); the
telemetry snapshot file a second process reads (:mod:`._snapshot`); and the plots of
``mmsb report`` / ``mmsb bench --plot`` (:mod:`._plots`, matplotlib imported on first use).

May import ``_errors``, ``_checks``, ``log`` (file helpers and the record types), ``adaptive``,
``graph`` and ``pages``; never ``shell`` (the shell hands its figures in as plain dicts and
callables).
"""

from ._cost import cost_model as cost_model, gather_locality as gather_locality, write_entropy as write_entropy
from ._export import MetricsServer as MetricsServer, registry_for as registry_for, serve_registry as serve_registry
from ._histogram import LATENCY_BUCKETS as LATENCY_BUCKETS, Histogram as Histogram
from ._recorder import Telemetry as Telemetry, timed_call as timed_call
from ._snapshot import SNAPSHOT_FILE as SNAPSHOT_FILE, read_snapshot as read_snapshot
from ._strategy import PropagationStrategy as PropagationStrategy
