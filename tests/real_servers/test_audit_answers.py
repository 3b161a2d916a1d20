"""Finding 12: what an auditor asks provline answers whole: the trace of a prediction (when it was
asked, with what, what came back, under which deployment), found by the client's or the model
server's own request id, and runs and models readable in an 80-column terminal."""

from __future__ import annotations

import uuid

import pytest

from tests.real_servers.audit import (
    as_utc,
    model_inputs,
    predict,
    provline,
    provline_json,
    v2_request,
    wait_for_trace,
)
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers
ENDPOINT = "/v2/models/iris/infer"
TRACE_FIELDS = ("request_time", "features", "outputs", "feature_rows", "output_rows", "row_count",
                "deployment_event_id", "request_id", "complete", "missing", "model_name", "model_version",
                "training_run_id", "dataset_digests")


def test_a_trace_says_when_what_and_under_which_deployment(servers: RealServers) -> None:
    _, rows = model_inputs(servers.training, "iris")
    sent = predict(servers.mlserver_sidecar, ENDPOINT, v2_request(rows[:1]))
    wait_for_trace(servers.stack, sent.prediction_id, until=lambda t: t.get("complete") is True)
    trace = provline_json(servers.stack, "trace", sent.prediction_id)
    assert [name for name in TRACE_FIELDS if name not in trace] == [], trace
    assert sent.sent_at <= as_utc(trace["request_time"]) <= sent.answered_at
    assert sorted(trace["features"].values()) == sorted(rows[0])
    assert list(trace["outputs"].values()) == sent.json()["outputs"][0]["data"]
    assert trace["row_count"] == 1
    assert trace["request_id"] == sent.json()["id"]
    deployments = servers.training.model("iris").get("deployments") or {}
    assert trace["deployment_event_id"] == deployments.get(ENDPOINT), servers.training.summary()


def test_a_prediction_is_found_by_the_clients_request_id(servers: RealServers) -> None:
    request_id = f"client-{uuid.uuid4()}"
    _, rows = model_inputs(servers.training, "iris")
    sent = predict(servers.mlserver_sidecar, ENDPOINT, v2_request(rows[:1], request_id=request_id))
    wait_for_trace(servers.stack, sent.prediction_id)
    found = provline_json(servers.stack, "trace", "--request-id", request_id)
    assert found["prediction_id"] == sent.prediction_id
    assert found["request_id"] == request_id


def test_a_prediction_is_found_by_the_request_id_mlserver_gave_it(servers: RealServers) -> None:
    _, rows = model_inputs(servers.training, "iris")
    sent = predict(servers.mlserver_sidecar, ENDPOINT, v2_request(rows[:1]))  # no id: MLServer makes one
    server_id = sent.response.headers["ce-requestid"]
    assert server_id == sent.json()["id"]
    wait_for_trace(servers.stack, sent.prediction_id)
    found = provline_json(servers.stack, "trace", "--request-id", server_id)
    assert found["prediction_id"] == sent.prediction_id


def test_runs_and_models_are_readable_at_80_columns(servers: RealServers) -> None:
    """Each row's ids stay whole on one line, where a reader can copy them."""
    run_ids = [servers.training.model(name).get("run_id") for name in ("iris", "diabetes")]
    assert all(run_ids), servers.training.summary()
    for command in ("runs", "models"):
        shown = provline(servers.stack, command, columns=80)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        lines = shown.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        for run_id in run_ids:
            assert any(run_id in line for line in lines), f"provline {command} at 80 columns:\n{shown.stdout}"
