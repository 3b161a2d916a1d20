"""Finding 9: a versioned V2 path is the endpoint of the model it serves, so it gets that endpoint's deployment."""

from __future__ import annotations

import pytest

from tests.real_servers.audit import model_inputs, predict, v2_request, wait_for_trace
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers
ENDPOINT = "/v2/models/iris/infer"


def test_a_versioned_v2_path_gets_the_deployment_of_its_model(servers: RealServers) -> None:
    deployment = (servers.training.model("iris").get("deployments") or {}).get(ENDPOINT)
    assert deployment, f"the training job recorded no deployment to {ENDPOINT}; {servers.training.summary()}"
    _, rows = model_inputs(servers.training, "iris")
    sent = predict(servers.mlserver_sidecar, "/v2/models/iris/versions/v1/infer", v2_request(rows[:1]))
    trace = wait_for_trace(servers.stack, sent.prediction_id,
                           until=lambda t: t.get("deployment_event_id") == deployment)
    assert trace["endpoint"] == ENDPOINT, trace
    assert trace.get("deployment_event_id") == deployment, trace
    assert (trace["model_name"], trace["model_version"]) == ("iris", "1")
