"""Decoded events -> table rows. Pure functions, no I/O.

Every event table starts with the same columns (:data:`COMMON_COLUMNS`), followed by the typed
key columns of its kind (:data:`TABLES`), and ends with where the message came from in Kafka.
``payload`` is the whole event as JSON text (datetimes ISO-8601, bytes base64); ``raw`` is the
exact Kafka message value, kept so that hashes and signatures can be verified later.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property
from typing import Any

import orjson

Value = Mapping[str, Any]
Extractor = Callable[[Value], Any]

COMMON_COLUMNS: tuple[str, ...] = (
    "event_id", "event_time", "producer_name", "producer_session", "hash", "prev_hash",
)
TRAILING_COLUMNS: tuple[str, ...] = ("payload", "raw", "kafka_topic", "kafka_partition", "kafka_offset")


@dataclass(frozen=True)
class TableSpec:
    table: str
    keys: tuple[tuple[str, Extractor], ...]

    @cached_property
    def columns(self) -> tuple[str, ...]:
        return COMMON_COLUMNS + tuple(name for name, _ in self.keys) + TRAILING_COLUMNS

    @cached_property
    def lookup_index(self) -> int:
        return self.columns.index(LOOKUP_COLUMNS[self.table])


def _field(name: str) -> Extractor:
    return lambda value: value.get(name)


def _text(name: str) -> Extractor:
    """Enums decode as str already; this keeps a missing optional field as None."""
    return lambda value: None if value.get(name) is None else str(value[name])


def _nested(outer: str, inner: str) -> Extractor:
    return lambda value: (value.get(outer) or {}).get(inner)


def _strings(name: str) -> Extractor:
    return lambda value: [str(item) for item in value.get(name) or []]


def _spec(table: str, *keys: tuple[str, Extractor]) -> TableSpec:
    return TableSpec(table=table, keys=keys)


def _same(*names: str) -> tuple[tuple[str, Extractor], ...]:
    return tuple((name, _field(name)) for name in names)


TABLES: dict[str, TableSpec] = {
    "RunEvent": _spec(
        "run_events",
        *_same("run_id", "name"), ("state", _text("state")), *_same("stage", "parent_run_id"),
        ("code_repo", _nested("code", "repo")), ("code_commit", _nested("code", "commit")),
    ),
    "DatasetVersion": _spec("dataset_versions", *_same("digest", "name", "run_id", "row_count")),
    "FeatureSetVersion": _spec("feature_set_versions", *_same("digest", "name", "run_id")),
    "ModelVersion": _spec(
        "model_versions",
        ("model_name", _field("model_name")), ("model_version", _field("version")),
        *_same("artifact_uri", "artifact_sha256", "run_id"), ("datasets", _strings("datasets")),
    ),
    "Evaluation": _spec("evaluations", *_same("model_name", "model_version", "dataset", "passed", "run_id")),
    "Decision": _spec(
        "decisions", *_same("subject", "transition"), ("outcome", _text("outcome")), *_same("actor", "role"),
    ),
    "Deployment": _spec(
        "deployments", *_same("model_name", "model_version", "environment", "endpoint"),
        ("action", _text("action")),
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
               "artifact_sha256", "training_run_id"),
        ("dataset_digests", _strings("dataset_digests")),
    ),
    "Feedback": _spec("feedback", *_same("prediction_id", "label", "outcome", "source")),
    "DriftMetric": _spec(
        "drift_metrics",
        *_same("model_name", "model_version", "feature", "metric", "window_start", "window_end", "value",
               "breached"),
    ),
}


# The first ORDER BY column of each event table (sink/sql/0001_event_tables.sql): a lookup that
# names it with the event id reads only the granules holding that event.
LOOKUP_COLUMNS: dict[str, str] = {
    "run_events": "run_id", "dataset_versions": "digest", "feature_set_versions": "digest",
    "model_versions": "model_name", "evaluations": "model_name", "decisions": "subject",
    "deployments": "model_name", "delivery_gaps": "producer_session", "inference_requests": "prediction_id",
    "inference_responses": "prediction_id", "prediction_traces": "prediction_id", "feedback": "prediction_id",
    "drift_metrics": "model_name",
}
INDEX_COLUMNS: tuple[str, ...] = (
    "model_name", "model_version", "event_time", "prediction_id", "event_id", "endpoint", "complete",
    "training_run_id",
)


def index_row(value: Value) -> tuple[Any, ...]:
    """The ``prediction_index`` row of one PredictionTrace (unknown model: empty strings)."""
    return (
        value.get("model_name") or "", value.get("model_version") or "", value["event_time"],
        value["prediction_id"], value["event_id"], value["endpoint"], bool(value["complete"]),
        value.get("training_run_id"),
    )


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


def _orjson_default(value: Any) -> Any:
    """What orjson cannot write by itself: bytes as base64, other mappings as dicts."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json_default(value: Any) -> Any:
    """The standard library's fallback also needs datetimes, which orjson writes natively."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return _orjson_default(value)


def payload_json(value: Value) -> str:
    """The event as compact, strict JSON with sorted keys: datetimes ISO-8601, bytes base64.

    orjson on the sink's hot path (a walk of the event to look for NaN would cost more than the
    standard library's dumps), so NaN and ±Infinity are written as null, which JSON readers such
    as ClickHouse's JSONExtract* accept; the exact value stays in the ``raw`` column. Integers
    beyond 64 bits, which orjson refuses, go through the standard library.
    """
    try:
        return orjson.dumps(value, default=_orjson_default, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def to_row(kind: str, value: Value, origin: Origin) -> tuple[Any, ...]:
    """The row of ``kind``'s table for one decoded event, in :attr:`TableSpec.columns` order."""
    spec = table_for(kind)
    producer = value.get("producer") or {}
    common = (
        value["event_id"], value["event_time"], producer.get("name", ""), producer.get("session_id", ""),
        value["hash"], value.get("prev_hash"),
    )
    keys = tuple(extract(value) for _, extract in spec.keys)
    trailing = (payload_json(value), origin.raw, origin.topic, origin.partition, origin.offset)
    return common + keys + trailing
