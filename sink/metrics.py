"""Prometheus metrics of the sink (process-wide, in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS_WRITTEN = Counter("provline_sink_rows_written", "Rows inserted into ClickHouse", ["table"])
BATCHES = Counter("provline_sink_batches", "Batches processed, by outcome (committed, failed)", ["outcome"])
DLQ_MESSAGES = Counter("provline_sink_dlq_messages", "Messages sent to the dead-letter topic", ["reason"])
CONSUMER_ERRORS = Counter("provline_sink_consumer_errors", "Errors reported by the Kafka consumer", ["code"])
INSERT_SECONDS = Histogram("provline_sink_insert_seconds", "Seconds per ClickHouse insert", ["table"])
LAG = Gauge("provline_sink_lag", "Messages not yet committed, per partition (high watermark - committed)",
            ["topic", "partition"])
REDELIVERED_SKIPPED = Counter(
    "provline_sink_redelivered_skipped", "Redelivered events found already stored after a crash, not re-inserted",
    ["table"],
)
VERIFY_RUNS = Counter(
    "provline_sink_verify_runs", "Verifications run through the audit API, by outcome (clean, findings)", ["outcome"],
)
