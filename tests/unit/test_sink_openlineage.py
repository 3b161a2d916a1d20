from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from provline.producers import Lineage
from provline.sink.openlineage import PRODUCER_URI, PROVLINE_FACET_SCHEMA, run_to_openlineage
from tests.helpers import decoded, memory_lineage

REPO = Path(__file__).resolve().parents[2]


def recorded(lineage: Lineage) -> dict[str, list[dict]]:
    events: dict[str, list[dict]] = {}
    for kind, value in decoded(lineage.emitter):
        events.setdefault(kind, []).append(value)
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
    lineage = memory_lineage()
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
        assert facet["_producer"] == PRODUCER_URI
        schema_url = facet["_schemaURL"]
        assert schema_url.startswith("https://openlineage.io/spec/") or schema_url == PROVLINE_FACET_SCHEMA
    provline = complete["run"]["facets"]["provline"]
    assert provline["runId"] == run.run_id and provline["eventId"] == events["RunEvent"][-1]["event_id"]
    schema = json.loads((REPO / "schemas" / "openlineage" / "ProvlineRunFacet.json").read_text())
    assert schema["$id"] == PROVLINE_FACET_SCHEMA
    required = set(schema["$defs"]["ProvlineRunFacet"]["allOf"][1]["required"])
    assert required == set(provline) - {"_producer", "_schemaURL"}


def test_a_failed_nested_run_exports_fail_with_error_and_parent() -> None:
    lineage = memory_lineage()
    with pytest.raises(ValueError), lineage.run("pipeline") as outer, lineage.run("step"):
        raise ValueError("bad input")
    states = [e for e in recorded(lineage)["RunEvent"] if e["name"] == "step"]
    exported = run_to_openlineage(states)
    assert [e["eventType"] for e in exported] == ["START", "FAIL"]
    facets = exported[1]["run"]["facets"]
    assert facets["errorMessage"]["message"] == "ValueError: bad input"
    assert facets["parent"]["run"]["runId"] == outer.run_id
