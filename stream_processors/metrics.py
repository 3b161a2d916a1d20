"""Prometheus metrics of one processors worker, in a registry of its own (one per app).

``serve_metrics(metrics, port)`` exposes them on ``/metrics``; nothing is served at import time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

JOIN_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ProcessorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("provline_processors_events_in_total", "events consumed, by kind", ["kind"],
                                 registry=r)
        self.duplicates = Counter("provline_processors_duplicate_halves_total",
                                  "request/response halves seen again and ignored", registry=r)
        self.exchanges_joined = Counter(
            "provline_processors_exchanges_joined_total",
            "complete exchange frames turned into a trace at once, without a join-table entry", registry=r)
        self.traces_out = Counter("provline_processors_traces_out_total", "PredictionTrace events emitted",
                                  registry=r)
        self.partial_traces = Counter("provline_processors_partial_traces_total",
                                      "incomplete traces emitted, by what was missing", ["missing"], registry=r)
        self.traces_completed_late = Counter(
            "provline_processors_traces_completed_late_total",
            "completed revisions of traces that went out missing their lineage or deployment", registry=r)
        self.join_latency = Histogram(
            "provline_processors_join_latency_seconds",
            "from the later half's event time to the trace's emission", buckets=JOIN_LATENCY_BUCKETS, registry=r,
        )
        self.feedback_joined = Counter(
            "provline_processors_feedback_joined_total",
            "Feedback events joined to their prediction's trace: on the trace itself (arrived before it) or "
            "as a labelled copy (arrived after it)", ["at"], registry=r,
        )
        self.feedback_duplicates = Counter("provline_processors_duplicate_feedback_total",
                                           "Feedback events seen again and ignored", registry=r)
        self.feedback_dropped = Counter(
            "provline_processors_feedback_dropped_total",
            "Feedback events dropped unjoined: no trace arrived within the retention, or it was forgotten",
            registry=r,
        )
        self.dead_letters = Counter("provline_processors_dead_letters_total", "messages sent to the DLQ",
                                    registry=r)
        self.too_large = Counter("provline_processors_too_large_total",
                                 "traces (or table records) the broker refused for their size, dead-lettered without "
                                 "their bytes", registry=r)
        self.rewinds = Counter("provline_processors_rewinds_total",
                               "seeks back over inference offsets Faust skipped without handing them over",
                               registry=r)
        self.offsets_lost = Counter("provline_processors_offsets_lost_total",
                                    "inference offsets given up on: gone from the topic before a rewind got them",
                                    registry=r)
        self.pending = Gauge("provline_processors_pending_entries", "entries in the join table (this worker)",
                             registry=r)
        self.lag = Gauge("provline_processors_consumer_lag", "messages not yet read, per topic partition",
                         ["topic", "partition"], registry=r)
        self.drift_metrics = Counter("provline_processors_drift_metrics_total", "DriftMetric events emitted",
                                     ["breached"], registry=r)
        self.drift_late = Counter("provline_processors_drift_late_values_total",
                                  "window summaries that arrived after their window closed (dropped)", registry=r)
        self.drift_unprofiled = Counter(
            "provline_processors_drift_unprofiled_values_total",
            "feature values with no training-data profile to compare against", registry=r,
        )


def serve_metrics(metrics: ProcessorMetrics, port: int) -> int:
    """Serve ``/metrics`` on ``port`` (0: any free one) from a daemon thread; returns the port bound.
    OSError if the port is taken."""
    try:
        server, _ = start_http_server(port, registry=metrics.registry)
    except OSError as exc:
        raise OSError(
            f"cannot serve Prometheus metrics on port {port}: {exc}; set PROVLINE_PROCESSORS__METRICS_PORT to a free "
            "port (each worker on a host needs its own), or to 0 for any free one"
        ) from exc
    return int(server.server_address[1])
