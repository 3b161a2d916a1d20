"""Finding 11: MLServer reports the version ``v1``; the training job registered ``1`` (MLflow registry
style) and declared ``served_versions=["v1"]``, so predictions resolve to the registered version and
its whole lineage. MLflow's server names no version: its deployment gives it."""

from __future__ import annotations

import pytest

from tests.real_servers.audit import Sent, model_inputs, predict, v2_request, wait_for_trace
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers


def check_traced_to_the_training_run(servers: RealServers, sent: Sent) -> None:
    iris = servers.training.model("iris")
    trace = wait_for_trace(servers.stack, sent.prediction_id, until=lambda t: t.get("complete") is True)
    assert (trace["model_name"], trace["model_version"]) == ("iris", "1"), trace
    assert trace["complete"] is True and trace["missing"] is None, trace
    assert trace["training_run_id"] == iris.get("run_id"), servers.training.summary()
    assert iris.get("dataset_digest") in trace["dataset_digests"]


def test_the_version_mlserver_reports_resolves_to_the_registered_one(servers: RealServers) -> None:
    _, rows = model_inputs(servers.training, "iris")
    sent = predict(servers.mlserver_sidecar, "/v2/models/iris/infer", v2_request(rows[:1]))
    assert sent.json()["model_version"] == "v1"
    check_traced_to_the_training_run(servers, sent)


def test_mlflow_predictions_get_the_version_of_their_deployment(servers: RealServers) -> None:
    columns, rows = model_inputs(servers.training, "iris")
    sent = predict(servers.mlflow_sidecar, "/invocations", {"dataframe_split": {"columns": columns, "data": rows[:1]}})
    check_traced_to_the_training_run(servers, sent)
