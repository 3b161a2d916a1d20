from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from provline.producers import EmitterSettings, Lineage
from provline.producers.openlineage import PRODUCER_URI, run_to_openlineage
from provline.schemas import default_catalog


def recorded(lineage: Lineage) -> dict[str, list[dict]]:
    events: dict[str, list[dict]] = {}
    for message in lineage.emitter.transport.messages:
        decoded = default_catalog().decode(message.value)
        events.setdefault(decoded.record, []).append(decoded.value)
    return events


def facets_everywhere(event: dict) -> list[dict]:
    found = list(event["run"]["facets"].values()) + list(event["job"]["facets"].values())
    for dataset in event["inputs"] + event["outputs"]:
        found += list(dataset["facets"].values())
    return found


def test_a_completed_run_exports_start_and_complete_with_code_params_and_datasets(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("x,y\n1,a\n2,b\n")
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"w")
    lineage = Lineage(settings=EmitterSettings(transport="memory"))
    with lineage.run("train-churn", stage="training", params={"lr": 0.1}, seed=3) as run:
        digest = run.use_dataset(data, name="customers")
        run.log_metric("auc", 0.9)
        run.register_model(artifact, name="churn", version="2")
    events = recorded(lineage)

    exported = run_to_openlineage(
        events["RunEvent"], datasets={d["digest"]: d for d in events["DatasetVersion"]},
        models=events["ModelVersion"], namespace="acme",
    )

    assert [e["eventType"] for e in exported] == ["START", "COMPLETE"]
    complete = exported[1]
    assert complete["run"]["runId"] == run.run_id and uuid.UUID(complete["run"]["runId"])
    assert complete["job"] == {**complete["job"], "namespace": "acme", "name": "train-churn"}
    assert complete["producer"] == PRODUCER_URI and complete["schemaURL"].startswith("https://openlineage.io/spec/")
    assert "T" in complete["eventTime"]
    source = complete["job"]["facets"]["sourceCodeLocation"]
    assert source["type"] == "git" and source["version"] == run.code["commit"]
    parameters = {p["key"]: p["value"] for p in complete["run"]["facets"]["executionParameters"]["parameters"]}
    assert parameters == {"lr": "0.1", "seed.seed": "3", "metric.auc": "0.9"}
    [dataset] = complete["inputs"]
    assert dataset["name"] == "customers" and dataset["facets"]["version"]["datasetVersion"] == digest
    assert [f["name"] for f in dataset["facets"]["schema"]["fields"]] == ["x", "y"]
    assert complete["outputs"] == [{**complete["outputs"][0], "namespace": "acme.models", "name": "churn"}]
    for facet in facets_everywhere(complete):
        assert facet["_producer"] == PRODUCER_URI and facet["_schemaURL"].startswith("https://openlineage.io/spec/")


def test_a_failed_nested_run_exports_fail_with_error_and_parent() -> None:
    lineage = Lineage(settings=EmitterSettings(transport="memory"))
    with pytest.raises(ValueError), lineage.run("pipeline") as outer, lineage.run("step"):
        raise ValueError("bad input")
    states = [e for e in recorded(lineage)["RunEvent"] if e["name"] == "step"]
    exported = run_to_openlineage(states)
    assert [e["eventType"] for e in exported] == ["START", "FAIL"]
    facets = exported[1]["run"]["facets"]
    assert facets["errorMessage"]["message"] == "ValueError: bad input"
    assert facets["parent"]["run"]["runId"] == outer.run_id
