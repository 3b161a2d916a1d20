"""The MLflow bridge's pure mapping: MLflow REST entities to provline events with stable ids."""

from __future__ import annotations

import json

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
    ]
    for kind, fields in events:
        value = {**new_envelope(producer_identity(mapping.PRODUCER_NAME, "s")), **fields}
        decoded = catalog.decode(catalog.encode(kind, value))
        assert decoded.value["event_id"] == fields["event_id"]
