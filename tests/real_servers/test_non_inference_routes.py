"""Finding 8: health and metadata calls of KServe V2 and MLflow servers are relayed, and make no record."""

from __future__ import annotations

import httpx
import pytest

from tests.real_servers.audit import model_inputs, predict, send, v2_request, wait_for_trace
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers
MLSERVER_ROUTES = ("/v2/health/ready", "/v2/health/live", "/v2", "/v2/models/iris", "/v2/models/iris/ready")
MLFLOW_ROUTES = ("/ping", "/health", "/version")


def test_health_and_metadata_calls_are_relayed_and_not_recorded(servers: RealServers) -> None:
    prediction_ids = []
    for sidecar, server, routes in ((servers.mlserver_sidecar, servers.mlserver, MLSERVER_ROUTES),
                                    (servers.mlflow_sidecar, servers.mlflow, MLFLOW_ROUTES)):
        for route in routes:
            through = send(sidecar, "GET", route).response
            direct = httpx.get(f"{server.url}{route}", timeout=10)
            assert (through.status_code, through.content) == (direct.status_code, direct.content), route
            if "X-Prediction-ID" in through.headers:
                prediction_ids.append(through.headers["X-Prediction-ID"])

    # a prediction through each sidecar after them: once its trace is stored, so is anything recorded before
    columns, rows = model_inputs(servers.training, "iris")
    markers = [predict(servers.mlserver_sidecar, "/v2/models/iris/infer", v2_request(rows[:1])),
               predict(servers.mlflow_sidecar, "/invocations",
                       {"dataframe_split": {"columns": columns, "data": rows[:1]}})]
    for marker in markers:
        wait_for_trace(servers.stack, marker.prediction_id)

    routes = ", ".join(f"'{route}'" for route in MLSERVER_ROUTES + MLFLOW_ROUTES)
    ids = ", ".join(f"'{prediction_id}'" for prediction_id in prediction_ids) or "''"
    recorded = servers.stack.sql(f"""
        SELECT 'request' AS kind, prediction_id, endpoint FROM inference_requests
        WHERE endpoint IN ({routes}) OR prediction_id IN ({ids})
        UNION ALL SELECT 'response', prediction_id, endpoint FROM inference_responses
        WHERE endpoint IN ({routes}) OR prediction_id IN ({ids})
        UNION ALL SELECT 'trace', prediction_id, endpoint FROM prediction_traces
        WHERE endpoint IN ({routes}) OR prediction_id IN ({ids})""")
    assert recorded == [], f"{len(recorded)} records of health and metadata calls: {recorded[:6]}"
