from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from provline.stream_processors.lineage import LineageIndex, to_micros

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def deployment(version: str, when: float, *, action: str = "DEPLOY", endpoint: str = "/predict",
               model: str = "churn", event_id: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id or f"dep-{version}-{action}-{when}", "event_time": at(when), "model_name": model,
        "model_version": version, "environment": "prod", "endpoint": endpoint, "action": action,
    }


def model_version(version: str, *, run_id: str | None = "run-1", model: str = "churn") -> dict[str, Any]:
    return {
        "event_id": f"mv-{version}", "event_time": at(0), "model_name": model, "version": version,
        "artifact_uri": f"s3://models/{model}/{version}", "artifact_sha256": f"sha-{version}",
        "run_id": run_id, "datasets": ["ds-1"], "feature_sets": ["fs-1"],
    }


def run_event(run_id: str, when: float, code: dict[str, Any] | None, state: str = "COMPLETED") -> dict[str, Any]:
    return {"event_id": f"run-{run_id}-{when}", "event_time": at(when), "run_id": run_id, "name": "train",
            "state": state, "code": code}


def test_to_micros() -> None:
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1)) == 1_000_000
    assert to_micros(42) == 42
    assert to_micros(None) is None


def test_deployment_at_picks_latest_at_or_before() -> None:
    index = LineageIndex()
    index.ingest("Deployment", deployment("1", 10))
    index.ingest("Deployment", deployment("2", 20, action="PROMOTE"))
    assert index.deployment_at("/predict", at(5)) is None
    assert index.deployment_at("/predict", at(10)).model_version == "1"  # inclusive
    assert index.deployment_at("/predict", at(19.999)).model_version == "1"
    assert index.deployment_at("/predict", at(20)).model_version == "2"
    assert index.deployment_at("/other", at(30)) is None


def test_rollback_and_out_of_order_arrival() -> None:
    index = LineageIndex()
    # arrival order differs from event time order
    index.ingest("Deployment", deployment("1", 30, action="ROLLBACK"))
    index.ingest("Deployment", deployment("2", 20))
    index.ingest("Deployment", deployment("1", 10))
    assert index.deployment_at("/predict", at(15)).model_version == "1"
    assert index.deployment_at("/predict", at(25)).model_version == "2"
    rolled_back = index.deployment_at("/predict", at(35))
    assert rolled_back.model_version == "1" and rolled_back.action == "ROLLBACK"


def test_retire_removes_only_the_serving_version() -> None:
    index = LineageIndex()
    index.ingest("Deployment", deployment("1", 10))
    index.ingest("Deployment", deployment("1", 20, action="RETIRE"))
    assert index.deployment_at("/predict", at(25)) is None
    index.ingest("Deployment", deployment("2", 30))
    index.ingest("Deployment", deployment("1", 40, action="RETIRE"))  # retiring a version not serving
    assert index.deployment_at("/predict", at(45)).model_version == "2"


def test_apply_is_idempotent_and_tombstones_delete() -> None:
    index = LineageIndex()
    entries = index.ingest("Deployment", deployment("1", 10))
    for key, value in entries:
        index.apply(key, value)
    assert len(index) == 1
    key, _ = entries[0]
    index.apply(key, None)
    assert index.deployment_at("/predict", at(20)) is None
    index.apply("unknown/x", {"a": 1})
    assert len(index) == 0


def test_model_and_run_code() -> None:
    index = LineageIndex()
    index.ingest("ModelVersion", model_version("1"))
    model = index.model("churn", "1")
    assert model is not None and model.artifact_sha256 == "sha-1" and model.run_id == "run-1"
    assert model.datasets == ("ds-1",) and model.feature_sets == ("fs-1",)
    assert index.model("churn", "2") is None

    assert index.ingest("RunEvent", run_event("run-1", 1, None, state="STARTED")) == []
    index.ingest("RunEvent", run_event("run-1", 2, {"repo": "git@x:y", "commit": "abc"}))
    # a later state without code keeps the code; an older state with code does not replace it
    assert index.ingest("RunEvent", run_event("run-1", 3, None)) == []
    assert index.ingest("RunEvent", run_event("run-1", 1.5, {"repo": "git@x:y", "commit": "old"})) == []
    assert index.code("run-1").commit == "abc"
    index.ingest("RunEvent", run_event("run-1", 4, {"repo": "git@x:y", "commit": "def"}))
    assert index.code("run-1").commit == "def"
    assert index.code("run-2") is None


def test_entries_round_trip_through_a_fresh_index() -> None:
    """What another worker sees: only the persisted entries, applied in any order."""
    source = LineageIndex()
    entries = [
        *source.ingest("Deployment", deployment("1", 10)),
        *source.ingest("ModelVersion", model_version("1")),
        *source.ingest("RunEvent", run_event("run-1", 2, {"repo": "r", "commit": "c"})),
    ]
    mirror = LineageIndex()
    for key, value in reversed(entries):
        mirror.apply(key, value)
    assert mirror.deployment_at("/predict", at(11)) == source.deployment_at("/predict", at(11))
    assert mirror.model("churn", "1") == source.model("churn", "1")
    assert mirror.code("run-1") == source.code("run-1")


@pytest.mark.parametrize("kind", ["Evaluation", "Decision", "DatasetVersion"])
def test_other_kinds_are_ignored(kind: str) -> None:
    assert LineageIndex().ingest(kind, {"event_id": "x", "event_time": T0}) == []
