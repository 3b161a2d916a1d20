from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import attr
import jsonschema
import pytest
import referencing
from openlineage.client.generated.base import RunEvent
from openlineage.client.serde import Serde

from provline.producers import Lineage
from provline.sink.errors import OpenLineageModelError
from provline.sink.openlineage import (
    CUSTOM_FACETS,
    PRODUCER_URI,
    PROVLINE_FACET_SCHEMA,
    EndpointDeploymentChainJobFacet,
    MLEvaluationRunFacet,
    MLModelDatasetFacet,
    MLTrainingRunFacet,
    StageLifecycleDatasetFacet,
    deployments_to_openlineage,
    facet_schema_url,
    parse_run_event,
    run_to_openlineage,
)
from tests.helpers import decoded, memory_lineage

REPO = Path(__file__).resolve().parents[2]
FACET_SCHEMAS = REPO / "schemas" / "openlineage"
# The base facet definitions our schemas refer to, as OpenLineage 2-0-2 defines them (the client ships no
# spec files, and tests do not reach the network): every facet has a _producer and a _schemaURL URI.
OPENLINEAGE_SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
_BASE = {"type": "object", "required": ["_producer", "_schemaURL"],
         "properties": {"_producer": {"type": "string", "format": "uri"},
                        "_schemaURL": {"type": "string", "format": "uri"}}}
_DELETABLE = {"allOf": [{"$ref": "#/$defs/BaseFacet"}, {"properties": {"_deleted": {"type": "boolean"}}}]}
OPENLINEAGE_BASE_FACETS = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": OPENLINEAGE_SPEC,
                           "$defs": {"BaseFacet": _BASE, "RunFacet": {"allOf": [{"$ref": "#/$defs/BaseFacet"}]},
                                     "JobFacet": _DELETABLE, "DatasetFacet": _DELETABLE}}


def facet_registry() -> referencing.Registry:
    resources = [referencing.Resource.from_contents(OPENLINEAGE_BASE_FACETS)]
    resources += [referencing.Resource.from_contents(json.loads(f.read_text())) for f in FACET_SCHEMAS.glob("*.json")]
    return referencing.Registry().with_resources((r.contents["$id"], r) for r in resources)


def validate_custom_facet(facet: dict) -> None:
    """``facet`` (JSON) against the schema its ``_schemaURL`` names, from schemas/openlineage/."""
    jsonschema.Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=facet_registry()).validate(facet)


def assert_round_trip(event: dict) -> RunEvent:
    """The client's model rebuilds ``event``, its Serde writes the same JSON back; custom facets fit their schemas."""
    parsed = parse_run_event(json.loads(json.dumps(event)))
    assert json.loads(Serde.to_json(parsed)) == event
    for facet in facets_everywhere(event):
        if facet["_schemaURL"].startswith(PRODUCER_URI):
            validate_custom_facet(facet)
    return parsed


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
    custom = {facet_schema_url(cls.__name__) for cls in CUSTOM_FACETS}
    for facet in facets_everywhere(complete):
        assert facet["_producer"] == PRODUCER_URI
        schema_url = facet["_schemaURL"]
        assert schema_url.startswith("https://openlineage.io/spec/") or schema_url in custom
    provline = complete["run"]["facets"]["provline"]
    assert provline["runId"] == run.run_id and provline["eventId"] == events["RunEvent"][-1]["event_id"]
    assert provline["_schemaURL"] == f"{PROVLINE_FACET_SCHEMA}#/$defs/ProvlineRunFacet"
    schema = json.loads((REPO / "schemas" / "openlineage" / "ProvlineRunFacet.json").read_text())
    assert schema["$id"] == PROVLINE_FACET_SCHEMA
    required = set(schema["$defs"]["ProvlineRunFacet"]["allOf"][1]["required"])
    assert required == set(provline) - {"_producer", "_schemaURL"}
    for event in exported:
        assert_round_trip(event)


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


def test_a_training_run_carries_model_training_and_evaluation_facets_that_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("age,plan\n1,a\n")
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"weights")
    lineage = memory_lineage()
    with lineage.run("train-churn", stage="training", params={"lr": 0.1, "depth": 4}, seed=7) as run:
        digest = run.use_dataset(data, name="customers")
        run.log_metric("loss", 0.25)
        model = run.register_model(artifact, name="churn", version="2", framework="sklearn",
                                   artifact_uri="s3://m/churn/2", signature={"inputs": ["age", "plan"],
                                                                             "outputs": ["churn"]})
        lineage.evaluate("churn", "2", metrics={"auc": 0.78, "latency_ms": 12.0}, minimums={"auc": 0.8},
                         dataset=digest, tests=["holdout"])
    events = recorded(lineage)

    exported = run_to_openlineage(events["RunEvent"], datasets={d["digest"]: d for d in events["DatasetVersion"]},
                                  models=events["ModelVersion"], evaluations=events["Evaluation"], namespace="acme")

    start, complete = exported
    training = complete["run"]["facets"]["mlTraining"]
    assert (training["hyperparameters"], training["seeds"], training["metrics"]) == (
        {"lr": "0.1", "depth": "4"}, {"seed": 7}, {"loss": 0.25})
    assert training["stage"] == "training" and "mlEvaluation" not in start["run"]["facets"]
    [evaluation] = complete["run"]["facets"]["mlEvaluation"]["evaluations"]
    assert (evaluation["modelName"], evaluation["modelVersion"], evaluation["result"]) == ("churn", "2", "FAIL")
    assert evaluation["dataset"] == digest and evaluation["tests"] == ["holdout"]
    assert evaluation["evaluationRunId"] == run.run_id
    assert [(m["name"], m["value"], m.get("threshold"), m.get("passed")) for m in evaluation["metrics"]] == [
        ("auc", 0.78, 0.8, False), ("latency_ms", 12.0, None, None)]
    [output] = [o for o in complete["outputs"] if o["namespace"] == "acme.models"]
    ml_model = output["facets"]["mlModel"]
    assert ml_model == {**ml_model, "name": "churn", "version": "2", "framework": "sklearn",
                        "artifactUri": "s3://m/churn/2", "artifactSha256": model["artifact_sha256"],
                        "signature": {"inputs": ["age", "plan"], "outputs": ["churn"]}, "trainingRunId": run.run_id}
    assert ml_model["registeredTime"].startswith(str(model["event_time"].year)) and "T" in ml_model["registeredTime"]
    assert output["facets"]["version"]["datasetVersion"] == "2"

    parsed = assert_round_trip(complete)
    assert isinstance(parsed.run.facets["mlTraining"], MLTrainingRunFacet)
    assert isinstance(parsed.run.facets["mlEvaluation"], MLEvaluationRunFacet)
    assert isinstance(parsed.outputs[-1].facets["mlModel"], MLModelDatasetFacet)
    assert parsed.outputs[-1].facets["mlModel"].signature.outputs == ["churn"]
    assert_round_trip(start)


def deployment_history() -> tuple[dict, dict[str, list[dict]]]:
    """churn@1 in production; churn@2 approved, deployed to staging, promoted to production (replacing 1,
    not stated), rolled back (1 again), then retired from staging."""
    lineage = memory_lineage(producer_name="release")
    lineage.emitter.emit("ModelVersion", {"model_name": "churn", "version": "1", "artifact_uri": "s3://m/1",
                                          "artifact_sha256": "a" * 64, "datasets": []})
    v2 = lineage.emitter.emit("ModelVersion", {"model_name": "churn", "version": "2", "artifact_uri": "s3://m/2",
                                               "artifact_sha256": "b" * 64, "framework": "sklearn", "run_id": "run-2",
                                               "datasets": [], "input_names": ["age"], "output_names": ["churn"]})
    lineage.deploy("churn", "1", endpoint="/predict", environment="production")
    lineage.decide("model:churn@2", transition="staging->production", approved=True, actor="rita",
                   role="risk-officer", rationale="auc above 0.8")
    lineage.deploy("churn", "2", endpoint="/predict", environment="staging")
    lineage.deploy("churn", "2", endpoint="/predict", environment="production", action="PROMOTE", reason="approved")
    lineage.deploy("churn", "1", endpoint="/predict", environment="production", action="ROLLBACK",
                   reason="auc dropped", previous_version="2")
    lineage.deploy("churn", "2", endpoint="/predict", environment="staging", action="RETIRE", reason="superseded")
    return v2, recorded(lineage)


def test_a_model_versions_deployments_export_one_event_per_endpoint_with_chain_and_lifecycle() -> None:
    model, events = deployment_history()

    exported = deployments_to_openlineage(model, deployments=events["Deployment"], decisions=events["Decision"],
                                          namespace="acme")

    assert [e["job"]["name"] for e in exported] == ["endpoint:production:/predict", "endpoint:staging:/predict"]
    production, staging = exported
    chain = production["job"]["facets"]["endpointDeploymentChain"]
    assert (chain["endpoint"], chain["environment"], chain["modelName"], chain["currentVersion"]) == (
        "/predict", "production", "churn", "1")
    assert [(d["action"], d["modelVersion"], d.get("previousVersion"), d.get("reason")) for d in chain["deployments"]] \
        == [("DEPLOY", "1", None, None), ("PROMOTE", "2", "1", "approved"), ("ROLLBACK", "1", "2", "auc dropped")]
    promote = chain["deployments"][1]
    assert (promote["approvedBy"], promote["approverRole"]) == ("rita", "risk-officer")
    assert promote["actor"].startswith("release") and "approvedBy" not in chain["deployments"][2]
    assert production["eventType"] == "COMPLETE" and production["eventTime"] == chain["deployments"][-1]["time"]
    staged = staging["job"]["facets"]["endpointDeploymentChain"]
    assert [d["action"] for d in staged["deployments"]] == ["DEPLOY", "RETIRE"] and "currentVersion" not in staged

    [model_input] = production["inputs"]
    assert (model_input["namespace"], model_input["name"]) == ("acme.models", "churn")
    assert model_input["facets"]["mlModel"]["version"] == "2"
    lifecycle = model_input["facets"]["stageLifecycle"]
    assert [(t["stage"], t["stageStatus"]) for t in lifecycle["transitions"]] == [
        ("registered", "Registered"), ("production", "Approved"), ("staging", "Deployed"),
        ("production", "Deployed"), ("production", "RolledBack"), ("staging", "Retired")]
    assert (lifecycle["stage"], lifecycle["stageStatus"]) == ("staging", "Retired")
    assert lifecycle["transitions"][1]["actor"] == "rita (risk-officer)"
    assert lifecycle["transitions"][4]["stageDescription"] == "ROLLBACK of version 1 on /predict: auc dropped"
    assert production["run"]["runId"] != staging["run"]["runId"]

    for event in exported:
        parsed = assert_round_trip(event)
        assert isinstance(parsed.job.facets["endpointDeploymentChain"], EndpointDeploymentChainJobFacet)
        assert isinstance(parsed.inputs[0].facets["stageLifecycle"], StageLifecycleDatasetFacet)
    # a version never deployed has no endpoint to export
    assert deployments_to_openlineage({**model, "version": "9"}, deployments=events["Deployment"]) == []


def test_the_client_model_refuses_what_it_cannot_rebuild() -> None:
    model, events = deployment_history()
    [event, _] = deployments_to_openlineage(model, deployments=events["Deployment"], decisions=events["Decision"])

    def altered(change) -> dict:  # type: ignore[no-untyped-def]
        copy = json.loads(json.dumps(event))
        change(copy)
        return copy

    chain = "$.job.facets.endpointDeploymentChain"
    cases = [
        (lambda e: e["run"].update(runId="not-a-uuid"), "Run refuses it"),
        (lambda e: e.update(eventTime="yesterday"), "RunEvent refuses it"),
        (lambda e: e["job"]["facets"].update(mystery={"_producer": PRODUCER_URI, "_schemaURL": PRODUCER_URI}),
         "$.job.facets.mystery: no JobFacet class is known"),
        (lambda e: e["job"]["facets"]["endpointDeploymentChain"].update(owner="x"),
         f"{chain}: EndpointDeploymentChainJobFacet has no field owner"),
        (lambda e: e["job"]["facets"]["endpointDeploymentChain"]["deployments"][0].update(time=5),
         f"{chain}.deployments[0].time: 5 is not a str"),
        (lambda e: e["job"]["facets"]["endpointDeploymentChain"].update(_schemaURL="https://x/y.json"),
         f"{chain}._schemaURL: 'https://x/y.json' is not EndpointDeploymentChainJobFacet's"),
        (lambda e: e.update(eventType="DEPLOYED"), "$.eventType: 'DEPLOYED' is not a EventType"),
    ]
    for change, message in cases:
        with pytest.raises(OpenLineageModelError, match=re.escape(message)):
            parse_run_event(altered(change))
    with pytest.raises(jsonschema.ValidationError, match="owner"):
        validate_custom_facet(altered(lambda e: e["job"]["facets"]["endpointDeploymentChain"].update(owner="x"))[
            "job"]["facets"]["endpointDeploymentChain"])


def test_every_custom_facet_class_has_a_schema_file_that_names_exactly_its_fields() -> None:
    for cls in CUSTOM_FACETS:
        name = cls.__name__
        schema = json.loads((FACET_SCHEMAS / f"{name}.json").read_text())
        assert facet_schema_url(name) == f"{schema['$id']}#/$defs/{name}"
        own = schema["$defs"][name]["allOf"][1]
        fields = {f.name for f in attr.fields(cls) if not f.name.startswith("_")}
        assert set(own["properties"]) == fields, name
        mandatory = {f.name for f in attr.fields(cls) if f.default is attr.NOTHING and not f.name.startswith("_")}
        assert set(own["required"]) == mandatory, name
        assert {"$ref": f"#/$defs/{name}"} in schema["properties"].values()
