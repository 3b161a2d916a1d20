"""The MLflow bridge's pure mapping: MLflow REST entities to provline events with stable ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from provline.producers.mlflow_bridge import mapping

RUN = {
    "info": {
        "run_id": "abc123",
        "run_name": "train",
        "status": "FINISHED",
        "start_time": 1700000000000,
        "end_time": 1700000005000,
    },
    "data": {
        "params": [{"key": "C", "value": "1.0"}],
        "metrics": [{"key": "accuracy", "value": 0.9}],
        "tags": [
            {"key": "mlflow.source.git.commit", "value": "deadbeef"},
            {"key": "mlflow.source.name", "value": "train.py"},
            {"key": "mlflow.parentRunId", "value": "parent1"},
        ],
    },
    "inputs": {
        "dataset_inputs": [
            {
                "dataset": {
                    "name": "iris",
                    "digest": "d1g",
                    "source": json.dumps({"uri": "file:///data/iris.csv"}),
                    "schema": json.dumps({"mlflow_colspec": [{"name": "x", "type": "double", "required": True}]}),
                    "profile": json.dumps({"num_rows": 150}),
                }
            }
        ]
    },
}


def test_run_maps_code_params_metrics_and_dataset_inputs() -> None:
    kind, fields = mapping.run_event(RUN)
    assert kind == "RunEvent" and fields["state"] == "COMPLETED" and fields["run_id"] == "abc123"
    assert fields["code"]["commit"] == "deadbeef" and fields["code"]["entrypoint"] == "train.py"
    assert fields["parent_run_id"] == "parent1" and fields["hyperparameters"] == {"C": "1.0"}
    assert fields["metrics"] == {"accuracy": 0.9} and fields["inputs"] == ["mlflow:iris:d1g"]
    assert fields["duration_ms"] == 5000


def test_same_mlflow_state_gives_same_event_id_and_a_new_state_a_new_one() -> None:
    assert mapping.run_event(RUN)[1]["event_id"] == mapping.run_event(RUN)[1]["event_id"]
    running = {**RUN, "info": {**RUN["info"], "status": "RUNNING"}}
    assert mapping.run_event(running)[1]["event_id"] != mapping.run_event(RUN)[1]["event_id"]


def test_dataset_input_maps_digest_schema_source_and_rows() -> None:
    kind, fields = mapping.dataset_event("abc123", RUN["inputs"]["dataset_inputs"][0])
    assert kind == "DatasetVersion" and fields["digest"] == "mlflow:iris:d1g"
    assert fields["columns"] == [{"name": "x", "type": "double", "nullable": False}]
    assert fields["sources"] == ["file:///data/iris.csv"] and fields["row_count"] == 150


def test_requirements_and_python_env_become_the_environment() -> None:
    env = mapping.environment("# pinned\nmlflow==3.1.0\nscikit-learn==1.5.0\n-e .\n", "3.11.9")
    assert env is not None and env["python"] == "3.11.9"
    assert env["packages"] == {"mlflow": "3.1.0", "scikit-learn": "1.5.0"}
    assert mapping.environment(None, None) is None


def test_model_version_names_run_uuid_signature_and_datasets() -> None:
    mlmodel = {
        "flavors": {"python_function": {}, "sklearn": {}},
        "model_uuid": "uuid-1",
        "signature": {
            "inputs": json.dumps([{"name": "x", "type": "double"}]),
            "outputs": json.dumps([{"type": "long"}]),
        },
    }
    version = {
        "name": "iris",
        "version": "2",
        "run_id": "abc123",
        "source": "models:/m-1",
        "creation_timestamp": 1700000009000,
    }
    kind, fields = mapping.model_version_event(
        version, datasets=["mlflow:iris:d1g"], artifact_sha256="sha256:00", mlmodel=mlmodel
    )
    assert kind == "ModelVersion" and fields["run_id"] == fields["mlflow_run_id"] == "abc123"
    assert fields["mlflow_model_uuid"] == "uuid-1" and fields["input_names"] == ["x"]
    assert fields["datasets"] == ["mlflow:iris:d1g"] and fields["flavors"] == ["python_function", "sklearn"]


def test_moved_alias_is_a_promotion_naming_the_previous_version() -> None:
    _, first = mapping.alias_deployment(
        "iris", "champion", "1", previous_version=None, endpoint="/invocations", environment="production", at_millis=1
    )
    _, moved = mapping.alias_deployment(
        "iris", "champion", "2", previous_version="1", endpoint="/invocations", environment="production", at_millis=2
    )
    assert first["action"] == "DEPLOY" and moved["action"] == "PROMOTE" and moved["previous_version"] == "1"
    assert first["event_id"] != moved["event_id"]


def test_every_mapped_event_encodes_and_decodes_with_the_current_schemas() -> None:
    from provline.schemas.events import new_envelope, producer_identity
    from provline.schemas.serde import default_catalog

    catalog = default_catalog()
    _, mv = mapping.model_version_event({"name": "iris", "version": "1", "creation_timestamp": 5}, datasets=[])
    events = [
        mapping.run_event(RUN, env=mapping.environment("a==1", "3.11")),
        mapping.dataset_event("abc123", RUN["inputs"]["dataset_inputs"][0]),
        ("ModelVersion", mv),
        mapping.alias_deployment(
            "iris",
            "champion",
            "1",
            previous_version=None,
            endpoint="/invocations",
            environment="production",
            at_millis=1,
        ),
        *mapping.logged_model_evaluations("iris", "1", {"data": {"metrics": [
            {"key": "acc", "value": 0.9, "timestamp": 3, "dataset_name": "iris", "dataset_digest": "d1g"}]}}),
        mapping.stage_deployment({"name": "iris", "version": "1", "current_stage": "Staging"}) or ("", {}),
        *mapping.tag_decisions({"name": "iris", "version": "1", "tags": [
            {"key": "provline.approval.production.risk-officer", "value": "ada"}]}),
    ]
    for kind, fields in events:
        value = {**new_envelope(producer_identity(mapping.PRODUCER_NAME, "s")), **fields}
        decoded = catalog.decode(catalog.encode(kind, value))
        assert decoded.value["event_id"] == fields["event_id"]


def test_an_alias_moved_between_imports_is_a_promotion_and_a_rollback_a_new_event() -> None:
    times = {"1": 1000, "2": 2000}

    def moves(aliases: dict[str, str], known: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any], list[str]]]:
        return mapping.alias_moves("iris", aliases, known, version_times=times)

    [(alias, first, history)] = moves({"champion": "1"}, {})
    assert (alias, first["action"], first["previous_version"], history) == ("champion", "DEPLOY", None, ["1"])
    assert first["endpoint"] == "models:/iris@champion" and first["environment"] == "champion"
    [(_, again, same)] = moves({"champion": "1"}, {"champion": {"history": history}})
    assert again == first and same == ["1"]
    [(_, moved, history)] = moves({"champion": "2"}, {"champion": {"history": history}})
    assert (moved["action"], moved["previous_version"], history) == ("PROMOTE", "1", ["1", "2"])
    [(_, back, history)] = moves({"champion": "1"}, {"champion": {"history": history}})
    assert (back["previous_version"], history) == ("2", ["1", "2", "1"])
    assert back["event_id"] not in {first["event_id"], moved["event_id"]}, "a rollback must not be deduplicated"
    # an import that keeps no state gives a move the id an import with state gave it
    [(_, stateless, _)] = moves({"champion": "2"}, {})
    assert stateless["event_id"] == moved["event_id"] and stateless["previous_version"] is None


def test_artifact_description_completes_the_model_version_but_keeps_its_id() -> None:
    _, fields = mapping.model_version_event(
        {"name": "iris", "version": "1", "run_id": "r1", "source": "models:/m-1", "creation_timestamp": 5},
        datasets=["mlflow:iris:d"],
    )
    described = {"artifact_uri": "mlflow-artifacts:/1/models/m-1/artifacts", "artifact_sha256": "sha256:ab",
                 "artifact_files": [{"path": "MLmodel", "sha256": "cd", "size": 3}], "flavors": ["sklearn"],
                 "mlflow_run_id": None, "framework": "sklearn", "input_names": []}
    merged = mapping.with_artifact(fields, described)
    assert merged["event_id"] == fields["event_id"] and merged["artifact_sha256"] == "sha256:ab"
    assert merged["artifact_uri"].startswith("mlflow-artifacts:/") and merged["flavors"] == ["sklearn"]
    assert merged["mlflow_run_id"] == "r1" and merged["datasets"] == ["mlflow:iris:d"]


def test_python_env_yaml_gives_the_python_version() -> None:
    assert mapping.python_version("python: 3.11.7\nbuild_dependencies:\n- pip==24.0\n") == "3.11.7"
    assert mapping.python_version("dependencies: [-r requirements.txt]\n") is None
    assert mapping.python_version(": not yaml: [") is None


def test_a_legacy_stage_is_a_deployment_and_no_stage_none() -> None:
    version = {"name": "iris", "version": "3", "current_stage": "Production", "last_updated_timestamp": 7000}
    kind, fields = mapping.stage_deployment(version) or ("", {})
    assert kind == "Deployment" and fields["environment"] == "production" and fields["action"] == "PROMOTE"
    assert mapping.stage_deployment({**version, "current_stage": "None"}) is None
    archived = mapping.stage_deployment({**version, "current_stage": "Archived"})
    assert archived is not None and archived[1]["action"] == "RETIRE"


def test_import_state_round_trips_per_server_and_destination(tmp_path: Path) -> None:
    from provline.producers.mlflow_bridge.importer import ImportReport, ImportState

    path = tmp_path / "state" / "mlflow-import.json"
    state = ImportState.load(path, key=ImportState.key_of("http://mlflow:5000/", "kafka:b:9092/provline"))
    assert state.sent == {} and state.key == "http://mlflow:5000 -> kafka:b:9092/provline"
    report = ImportReport(sent_ids={"e1": "RunEvent"}, aliases={"iris": {"champion": {"history": ["1"]}}},
                          environments={"r1": {"requirements": "a==1", "python": "3.11"}})
    state.commit(report)
    state.save()
    other = ImportState.load(path, key=ImportState.key_of("http://mlflow:5000", "kafka:other:9092/provline"))
    assert other.sent == {}, "another destination must not skip what this one received"
    other.sent["e2"] = "ModelVersion"
    other.save()
    again = ImportState.load(path, key=state.key)
    assert again.sent == {"e1": "RunEvent"} and again.aliases["iris"]["champion"]["history"] == ["1"]
    assert again.environments["r1"]["python"] == "3.11"
    path.write_text("{not json")
    try:
        ImportState.load(path, key=state.key)
    except ValueError as exc:
        assert "--state" in str(exc)
    else:
        raise AssertionError("a broken state file must be refused, not treated as empty")


def test_logged_model_metrics_are_one_evaluation_per_dataset_with_the_last_values() -> None:
    def metric(key: str, value: float, step: int, dataset: str | None = "d1") -> dict[str, Any]:
        return {"key": key, "value": value, "step": step, "timestamp": 1000 + step, "run_id": "r1",
                **({"dataset_name": "train", "dataset_digest": dataset} if dataset else {})}

    logged = {"info": {"model_id": "m-1", "source_run_id": "r1"},
              "data": {"metrics": [metric("acc", 0.5, 0), metric("acc", 0.9, 1), metric("loss", 0.2, 0),
                                   metric("acc", 0.7, 0, dataset=None)]}}
    evaluations = mapping.logged_model_evaluations("iris", "2", logged)
    assert [(kind, fields["dataset"]) for kind, fields in evaluations] == [("Evaluation", None),
                                                                           ("Evaluation", "mlflow:train:d1")]
    trained = evaluations[1][1]
    assert [(m["name"], m["value"]) for m in trained["metrics"]] == [("acc", 0.9), ("loss", 0.2)]
    assert trained["passed"] is True and trained["run_id"] == "r1" and trained["model_version"] == "2"
    assert [f["event_id"] for _, f in mapping.logged_model_evaluations("iris", "2", logged)] == \
        [f["event_id"] for _, f in evaluations], "the same metrics give the same ids"
    relogged = {**logged, "data": {"metrics": [*logged["data"]["metrics"], metric("acc", 0.95, 2)]}}
    ids = {fields["event_id"] for _, fields in mapping.logged_model_evaluations("iris", "2", relogged)}
    assert trained["event_id"] not in ids, "new metric values are a new Evaluation"


def test_a_version_names_its_logged_model_by_id_or_source() -> None:
    assert mapping.logged_model_id({"source": "models:/m-abc"}) == "m-abc"
    assert mapping.logged_model_id({"model_id": "m-x", "source": "runs:/r/model"}) == "m-x"
    assert mapping.logged_model_id({"source": "runs:/r/model"}) is None


def test_approval_tags_of_a_model_version_are_decisions_other_tags_nothing() -> None:
    version = {"name": "iris", "version": "2", "creation_timestamp": 9, "tags": [
        {"key": "provline.approval.production.risk-officer", "value": "ada"},
        {"key": "provline.rejection.staging.qa", "value": "bob"},
        {"key": "provline.approval.production", "value": "no role"},
        {"key": "team", "value": "fraud"},
    ]}
    decisions = [fields for _, fields in mapping.tag_decisions(version)]
    assert [(d["outcome"], d["transition"], d["role"], d["actor"]) for d in decisions] == [
        ("APPROVED", "registered->production", "risk-officer", "ada"), ("REJECTED", "registered->staging", "qa", "bob")]
    assert {d["subject"] for d in decisions} == {"model:iris@2"}
    assert [d["event_id"] for _, d in mapping.tag_decisions(version)] == [d["event_id"] for d in decisions]


def test_what_earlier_imports_sent_comes_back_from_their_events() -> None:
    from datetime import UTC, datetime

    def deployment(version: str, event_id: str, minute: int, endpoint: str = "models:/iris@champion") -> Any:
        return ("Deployment", {"event_id": event_id, "event_time": datetime(2026, 1, 1, 0, minute, tzinfo=UTC),
                               "model_name": "iris", "model_version": version, "endpoint": endpoint})

    events = [deployment("2", "d2", 5), deployment("1", "d1", 1), deployment("1", "d1", 9),  # d1 sent twice
              deployment("3", "x", 7, endpoint="/predict"), ("RunEvent", {"event_id": "r1"}),
              ("SessionSeal", {"event_id": "s1"})]
    sent, aliases = mapping.known_from_events(events)
    assert sent == {"d2": "Deployment", "d1": "Deployment", "x": "Deployment", "r1": "RunEvent"}
    assert aliases == {"iris": {"champion": {"history": ["1", "2"], "event_time": "2026-01-01T00:05:00+00:00"}}}
    [(_, back, history)] = mapping.alias_moves("iris", {"champion": "1"}, aliases["iris"], version_times={})
    assert (back["previous_version"], history) == ("2", ["1", "2", "1"])
