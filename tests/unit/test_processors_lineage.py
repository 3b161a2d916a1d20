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


# --- served versions (issue 14, item 11), signature names (item 6), prediction baselines (item 7) ---------


def test_a_served_version_declared_by_the_model_version_resolves_to_it() -> None:
    index = LineageIndex()
    index.ingest("ModelVersion", {**model_version("1"), "served_versions": ["v1"]})
    assert index.model("churn", "v1") == index.model("churn", "1")
    served = index.model("churn", "v1")
    assert served is not None and served.version == "1" and served.artifact_sha256 == "sha-1"
    assert index.model("churn", "v2") is None and index.model("other", "v1") is None


def test_a_served_version_declared_by_a_deployment_resolves_to_the_deployed_version() -> None:
    index = LineageIndex()
    index.ingest("ModelVersion", model_version("3"))
    index.ingest("Deployment", {**deployment("3", 10), "served_versions": ["v1"]})
    model = index.model("churn", "v1")
    assert model is not None and model.version == "3"
    # the server's version string finds the deployment that put the registered version on the endpoint
    found = index.last_deployment_of("/predict", "churn", "v1", at(20))
    assert found is not None and found.model_version == "3"
    assert index.deployment_at("/predict", at(20)).model_version == "3"  # unchanged meaning


def test_the_latest_declaration_wins_and_a_registered_version_is_never_shadowed() -> None:
    index = LineageIndex()
    index.ingest("ModelVersion", {**model_version("1"), "served_versions": ["v1"]})
    index.ingest("ModelVersion", {**model_version("2"), "event_time": at(50), "served_versions": ["v1", "1"]})
    assert index.model("churn", "v1").version == "2"
    assert index.model("churn", "1").version == "1"  # "1" is registered: it names itself
    entries = index.ingest("Deployment", {**deployment("1", 100), "served_versions": ["v1"]})
    assert index.model("churn", "v1").version == "1"
    index.apply(entries[0][0], None)  # the declaration goes with its entry
    assert index.model("churn", "v1").version == "2"


def test_served_versions_and_signature_names_survive_the_changelog() -> None:
    source = LineageIndex()
    entries = [
        *source.ingest("ModelVersion", {**model_version("1"), "served_versions": ["v1"],
                                        "input_names": ["a", "b"], "output_names": ["predict"]}),
        *source.ingest("Deployment", {**deployment("1", 10), "served_versions": ["r1"]}),
    ]
    mirror = LineageIndex()
    for key, value in reversed(entries):
        mirror.apply(key, value)
    for version in ("1", "v1", "r1"):
        model = mirror.model("churn", version)
        assert model == source.model("churn", "1") and model is not None
        assert (model.input_names, model.output_names) == (("a", "b"), ("predict",))
    # an entry written by an older provline has none of the new keys
    old = LineageIndex()
    old.apply("model/churn@1", {k: v for k, v in entries[0][1].items()
                                if k not in ("input_names", "output_names", "served_versions", "event_time_us")})
    assert old.model("churn", "1").input_names == () and old.model("churn", "v1") is None


def profiled(digest: str, column: str, mean: float) -> dict[str, Any]:
    return {"event_id": f"ds-{digest}", "event_time": at(0), "name": digest, "digest": digest, "profiles": [
        {"column": column, "kind": "NUMERIC", "count": 10, "null_count": 0, "quantiles": [0.0, 1.0],
         "bin_edges": [0.0, 1.0], "bin_counts": [10], "categories": {}, "mean": mean, "std": 1.0}]}


def test_outputs_are_compared_with_the_prediction_profile_and_inputs_with_the_training_data() -> None:
    index = LineageIndex()
    index.ingest("DatasetVersion", {**profiled("ds-1", "price", 100.0),
                                    "profiles": [*profiled("ds-1", "price", 100.0)["profiles"],
                                                 *profiled("ds-1", "x", 0.0)["profiles"]]})
    index.ingest("ModelVersion", model_version("1"))
    # no prediction profile yet: the output falls back to the training column of its name (the label)
    assert index.baseline_of("churn", "1", "price", output=True)[0] == "ds-1"
    index.ingest("DatasetVersion", profiled("preds-1", "price", 101.0))
    index.ingest("Evaluation", {"event_id": "ev-1", "event_time": at(5), "model_name": "churn",
                                "model_version": "1", "predictions_dataset": "preds-1"})
    digest, profile = index.baseline_of("churn", "1", "price", output=True)
    assert digest == "preds-1" and profile["mean"] == 101.0
    assert index.baseline_of("churn", "1", "price")[0] == "ds-1"  # an input of that name: the training data
    assert index.baseline_of("churn", "1", "x", output=True) is None  # never the label once predictions exist
    assert index.baseline_of("churn", "1", "x")[0] == "ds-1"


def test_the_latest_prediction_profile_wins_whatever_the_arrival_order() -> None:
    index = LineageIndex()
    index.ingest("ModelVersion", {**model_version("1"), "served_versions": ["v1"]})
    for digest in ("late", "early"):
        index.ingest("DatasetVersion", profiled(digest, "y", 1.0))
    index.ingest("Evaluation", {"event_id": "e2", "event_time": at(20), "model_name": "churn",
                                "model_version": "1", "predictions_dataset": "late"})
    assert index.ingest("ModelVersion", {**model_version("1"), "event_time": at(10), "served_versions": ["v1"],
                                         "predictions_dataset": "early"})[1:] == []
    assert index.baseline_of("churn", "v1", "y", output=True)[0] == "late"
