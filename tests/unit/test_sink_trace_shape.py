"""The pure half of sink.queries.trace: picking the newest rows and shaping the answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from provline.sink.queries import joined_trace_row, newest, shape_trace

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(second: int) -> datetime:
    return T0.replace(second=second)


def trace_row(event_id: str, second: int, **payload: Any) -> dict[str, Any]:
    body = {"event_time": at(second).isoformat(), "endpoint": "/p", "complete": True, **payload}
    return {"source": "trace", "event_id": event_id, "event_time": at(second), "payload_or_sha256": json.dumps(body)}


def registry_row(source: str, event_id: str, second: int, run_id: str | None, **fields: Any) -> dict[str, Any]:
    return {"source": source, "event_id": event_id, "event_time": at(second), "run_id": run_id,
            "uri_or_repo": None, "sha256_or_commit": None, "datasets": [], **fields}


def test_newest_orders_by_time_then_event_id_and_ignores_other_sources() -> None:
    rows = [trace_row("e1", 5), trace_row("e3", 9), trace_row("e2", 9),
            {"source": "request", "event_id": "r9", "event_time": at(30), "payload_or_sha256": "b"}]
    assert newest(rows, "trace")["event_id"] == "e3"  # same time: the larger (later UUIDv7) id
    assert newest(rows, "request")["event_id"] == "r9"
    assert newest(rows, "run") is None


def test_joined_row_takes_the_newest_of_each_source_and_only_the_chosen_run() -> None:
    prediction = [trace_row("t-old", 1, model_name="m", model_version="1"),
                  trace_row("t-new", 2, model_name="m", model_version="1"),
                  {"source": "request", "event_id": "req", "event_time": at(0), "payload_or_sha256": "b" * 64}]
    registry = [
        registry_row("model_version", "mv-old", 1, "run-a", uri_or_repo="s3://old"),
        registry_row("model_version", "mv-new", 3, "run-a", uri_or_repo="s3://new", sha256_or_commit="a" * 64,
                     datasets=["d1"]),
        registry_row("run", "run-a-1", 1, "run-a", uri_or_repo="git@r", sha256_or_commit="c1"),
        registry_row("run", "run-b-1", 9, "run-b", uri_or_repo="git@other", sha256_or_commit="zz"),
    ]
    row = joined_trace_row(prediction, registry, "run-a")
    assert row is not None
    assert (row["trace_event_id"], row["request_event_id"], row["request_body_sha256"]) == ("t-new", "req", "b" * 64)
    assert (row["model_version_event_id"], row["model_artifact_uri"], row["model_datasets"]) == (
        "mv-new", "s3://new", ["d1"])
    assert (row["run_event_id"], row["run_code_commit"]) == ("run-a-1", "c1")  # run-b is newer but not ours
    assert joined_trace_row(prediction, registry, None)["run_event_id"] is None
    assert joined_trace_row(prediction[2:], registry, "run-a") is None  # a request alone is no trace


def test_shape_falls_back_to_the_registry_and_passes_optional_feedback_fields() -> None:
    prediction = [trace_row("t", 1, model_name="m", model_version="1", label="churned", outcome=1.0,
                            feedback_source="crm", feedback_time="2025-01-02T00:00:00+00:00")]
    registry = [registry_row("model_version", "mv", 1, "run-a", uri_or_repo="s3://m", sha256_or_commit="a" * 64,
                             datasets=["d1"]),
                registry_row("run", "run-ev", 1, "run-a", uri_or_repo="git@r", sha256_or_commit="c1")]
    shaped = shape_trace("p", joined_trace_row(prediction, registry, "run-a"))
    assert (shaped["training_run_id"], shaped["code_commit"], shaped["dataset_digests"]) == ("run-a", "c1", ["d1"])
    assert shaped["sources"] == {"trace": "t", "request": None, "model_version": "mv", "run": "run-ev"}
    assert (shaped["label"], shaped["outcome"], shaped["feedback_source"], shaped["feedback_time"]) == (
        "churned", 1.0, "crm", "2025-01-02T00:00:00+00:00")

    bare = shape_trace("p", joined_trace_row([trace_row("t", 1)], [], None))
    assert not {"label", "outcome", "feedback_source", "feedback_time"} & bare.keys()  # v1 traces: absent
    assert bare["sources"] == {"trace": "t", "request": None, "model_version": None, "run": None}
    assert bare["dataset_digests"] == [] and bare["artifact_uri"] is None


def feedback_row(event_id: str, second: int, label: str) -> dict[str, Any]:
    body = {"event_id": event_id, "label": label, "outcome": None, "source": "crm",
            "observed_time": at(second).isoformat()}
    return {"source": "feedback", "event_id": event_id, "event_time": at(second), "payload_or_sha256": json.dumps(body)}


def test_a_trace_without_ground_truth_takes_the_newest_feedback_stored_for_its_prediction() -> None:
    """Issue 15: a trace joined from an exchange frame leaves no join state to label a copy of it with."""
    prediction = [trace_row("t", 1), feedback_row("f-old", 5, "stayed"), feedback_row("f-new", 9, "churned")]
    shaped = shape_trace("p", joined_trace_row(prediction, [], None))
    assert (shaped["label"], shaped["feedback_event_id"], shaped["feedback_time"]) == (
        "churned", "f-new", at(9).isoformat())
    assert shaped["sources"]["feedback"] == "f-new"
    labelled = [trace_row("t2", 10, label="stayed", feedback_event_id="f-old"), feedback_row("f-new", 9, "churned")]
    assert shape_trace("p", joined_trace_row(labelled, [], None))["label"] == "stayed"  # the join's own label wins
