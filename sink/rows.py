"""The event tables: their columns and how each column comes from an event. Pure, no I/O.

Every event table starts with the same columns (:data:`COMMON_COLUMNS`), followed by the typed
key columns of its kind (:data:`TABLES`), and ends with where the message came from in Kafka.
``payload`` is the whole event as JSON text (datetimes ISO-8601 in UTC, bytes base64); ``raw`` is
the exact Kafka message value, kept so that hashes and signatures can be verified later.

Rows are made by ClickHouse, not by Python (see :mod:`provline.sink.ingest`), so a key column is an SQL
expression over the event's Avro fields.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from typing import Any

COMMON_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "event_id"), ("event_time", "event_time"), ("producer_name", "producer.name"),
    ("producer_session", "producer.session_id"), ("hash", "hash"), ("prev_hash", "prev_hash"),
)
TRAILING_COLUMNS: tuple[str, ...] = ("payload", "raw", "kafka_topic", "kafka_partition", "kafka_offset")


@dataclass(frozen=True)
class TableSpec:
    table: str
    keys: tuple[tuple[str, str], ...]  # (column, SQL expression over the event's fields)

    @cached_property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in COMMON_COLUMNS + self.keys) + TRAILING_COLUMNS

    @cached_property
    def expressions(self) -> tuple[tuple[str, str], ...]:
        """(column, SQL expression) of every column before the trailing ones."""
        return COMMON_COLUMNS + self.keys


def _spec(table: str, *keys: tuple[str, str]) -> TableSpec:
    return TableSpec(table=table, keys=keys)


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, name) for name in names)


def _text(name: str) -> tuple[str, str]:
    """An Avro enum, stored as its symbol."""
    return name, f"toString({name})"


TABLES: dict[str, TableSpec] = {
    "RunEvent": _spec(
        "run_events",
        *_same("run_id", "name"), _text("state"), *_same("stage", "parent_run_id"),
        ("code_repo", "code.repo"), ("code_commit", "code.commit"),
    ),
    "DatasetVersion": _spec("dataset_versions", *_same("digest", "name", "run_id", "row_count")),
    "FeatureSetVersion": _spec("feature_set_versions", *_same("digest", "name", "run_id")),
    "ModelVersion": _spec(
        "model_versions",
        ("model_name", "model_name"), ("model_version", "version"),
        *_same("artifact_uri", "artifact_sha256", "run_id", "datasets"),
    ),
    "Evaluation": _spec("evaluations", *_same("model_name", "model_version", "dataset", "passed", "run_id")),
    "Decision": _spec("decisions", *_same("subject", "transition"), _text("outcome"), *_same("actor", "role")),
    "Deployment": _spec(
        "deployments", *_same("model_name", "model_version", "environment", "endpoint"), _text("action"),
    ),
    "DeliveryGap": _spec("delivery_gaps", *_same("dropped", "reason", "first_time", "last_time")),
    "InferenceRequest": _spec(
        "inference_requests",
        *_same("prediction_id", "endpoint", "model_name", "model_version", "body_sha256", "client_id"),
    ),
    "InferenceResponse": _spec(
        "inference_responses",
        *_same("prediction_id", "endpoint", "status", "model_name", "model_version", "body_sha256",
               "latency_us"),
    ),
    "PredictionTrace": _spec(
        "prediction_traces",
        *_same("prediction_id", "endpoint", "complete", "model_name", "model_version", "request_sha256",
               "artifact_sha256", "training_run_id", "dataset_digests", "request_id"),
    ),
    "Feedback": _spec(
        "feedback",
        ("prediction_id", "ifNull(prediction_id, '')"),  # '' until the client's request id is resolved
        *_same("label", "outcome", "source", "client_request_id"),
    ),
    "SessionSeal": _spec("session_seals", ("sealed_count", "`count`"), ("is_final", "`final`")),
    "DriftMetric": _spec(
        "drift_metrics",
        *_same("model_name", "model_version", "feature", "metric", "window_start", "window_end", "value",
               "breached"),
    ),
}


@dataclass(frozen=True)
class Origin:
    """Where a message was read from, and its exact bytes."""

    topic: str
    partition: int
    offset: int
    raw: bytes


def table_for(kind: str) -> TableSpec:
    try:
        return TABLES[kind]
    except KeyError:
        raise ValueError(
            f"no sink table for event kind {kind!r}; known kinds: {', '.join(sorted(TABLES))}; "
            "add the kind to sink/rows.py and a migration in sink/sql/"
        ) from None


def to_jsonable(value: Any) -> Any:
    """A JSON-ready copy: datetimes as ISO-8601, bytes as base64, containers converted recursively."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    return value


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive time (as the store's client returns them, and as people type them) is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
