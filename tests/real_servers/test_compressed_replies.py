"""Finding 4: MLServer gzips replies over ~1 KB, and HTTP clients ask for gzip by default; the sidecar
relays the compressed reply and still records its outputs."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.real_servers.audit import model_inputs, predict, v2_output, v2_request, wait_for_trace
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers
PATH = "/v2/models/iris/infer"


def test_a_gzip_reply_still_gives_its_outputs(servers: RealServers) -> None:
    _, rows = model_inputs(servers.training, "iris", evaluation=True)
    body = v2_request(rows, request_id=f"gzip-{uuid.uuid4()}", outputs=["predict_proba"])
    gzip = {"Accept-Encoding": "gzip"}
    sent = predict(servers.mlserver_sidecar, PATH, body, headers=gzip)
    direct = httpx.post(f"{servers.mlserver.url}{PATH}", json=body, headers=gzip, timeout=10)
    assert sent.response.headers.get("content-encoding") == "gzip"  # MLServer compressed it; the sidecar kept it so
    assert sent.json() == direct.json()

    trace = wait_for_trace(servers.stack, sent.prediction_id)
    first_row = v2_output(sent.json(), "predict_proba")[0]
    assert trace.get("outputs"), f"the trace of a gzip reply has no outputs: {trace}"
    assert sorted(trace["outputs"].values()) == pytest.approx(sorted(first_row))
    assert trace["model_name"] == "iris" and trace["model_version"], trace
