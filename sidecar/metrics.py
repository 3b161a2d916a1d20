"""Prometheus metrics of the sidecar, served on the admin port's ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("provline_sidecar_requests_total", "Replies sent to clients, by HTTP status", ["status"])
UPSTREAM_LATENCY = Histogram(
    "provline_sidecar_upstream_latency_seconds",
    "Time from sending the request upstream to having its whole response (or the failure)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
EVENT_ERRORS = Counter(
    "provline_sidecar_event_errors_total", "Exchanges whose events could not be built or emitted"
)
