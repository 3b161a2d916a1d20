"""Prometheus metrics of the sidecar, served on the admin port's ``/metrics``.

The emitter's own counters complete the picture: ``provline_events_emitted_total{kind}``,
``provline_events_delivered_total`` (published), ``provline_events_dropped_total{reason}``.
With several workers the metrics are summed over them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("provline_sidecar_requests_total", "Replies sent to clients, by HTTP status", ["status"])
UPSTREAM_LATENCY = Histogram(
    "provline_sidecar_upstream_latency_seconds",
    "Time from sending the request upstream to having its whole response (or the failure)",
    buckets=_LATENCY_BUCKETS,
)
ADDED_LATENCY = Histogram(
    "provline_sidecar_added_latency_seconds",
    "Time a request spent in the sidecar itself: its whole stay minus the upstream's time",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
EVENT_ERRORS = Counter(
    "provline_sidecar_event_errors_total",
    "Exchanges whose events could not be emitted even without their bodies (counted as dropped: record_failed)"
)
DEGRADED_RECORDS = Counter(
    "provline_sidecar_degraded_records_total",
    "Exchanges recorded without their bodies because the full record could not be built or emitted, "
    "by the exception that prevented it",
    ["reason"],
)
REFUSED_REQUESTS = Counter(
    "provline_sidecar_refused_requests_total",
    "Requests refused before the proxy saw them, by reason: header_too_large (431), header_timeout "
    "(408, or the connection closed when it sent nothing), max_connections (503)",
    ["reason"],
)
SAMPLED_OUT = Counter(
    "provline_sidecar_sampled_out_total", "Predictions proxied (with an id) but not recorded, by sampling"
)
NON_INFERENCE = Counter(
    "provline_sidecar_non_inference_total",
    "Known non-inference calls relayed (health, metadata, repository, metrics: sidecar/routes.py), by route "
    "kind; recorded only with PROVLINE_SIDECAR__RECORD_NON_INFERENCE",
    ["kind"],
)
UPSTREAM_ABORTED = Counter(
    "provline_sidecar_upstream_aborted_total", "Streamed replies cut off because the upstream failed mid-body"
)
EVENT_BACKLOG = Gauge(
    "provline_sidecar_event_backlog",
    "Events accepted and not yet acknowledged by the broker: in memory or in the disk spool",
    multiprocess_mode="livesum",
)
