"""The sidecar in front of servers that answer as MLServer (KServe V2) and `mlflow models serve` do
(issue 14): gzip replies, batches, versioned paths, health and metadata calls, request ids."""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from provline.schemas import default_catalog
from provline.sidecar.payload import DEFAULT_MAX_ROWS
from tests.helpers import LoopThread, events_sent, serve_app
from tests.integration.test_sidecar_proxy import Running, sidecar

pytestmark = pytest.mark.integration

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
GZIP_OVER = 1024  # MLServer gzips replies over about 1 KB when the client accepts gzip


@dataclass
class ModelServer:
    """Answers KServe V2 as MLServer 1.7 does, and MLflow's scoring protocol; counts metadata calls."""

    port: int = 0
    metadata_calls: int = 0
    seen_paths: list[str] = field(default_factory=list)
    sent: bytes = b""  # the last reply body, as sent

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/health/{state}", self.ready)
        app.router.add_get("/v2/models/{name}", self.model_metadata)
        app.router.add_get("/v2/models/{name}/ready", self.ready)
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        app.router.add_post("/v2/models/{name}/versions/{version}/infer", self.infer)
        app.router.add_get("/ping", self.ping)
        app.router.add_post("/invocations", self.invocations)
        runner, self.port = await serve_app(app)
        return runner

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "mlserver", "version": "1.7.0", "extensions": []})

    async def ready(self, request: web.Request) -> web.Response:
        self.seen_paths.append(request.path)
        return web.Response(status=200)

    async def ping(self, request: web.Request) -> web.Response:
        self.seen_paths.append(request.path)
        return web.Response(text="\n")

    async def model_metadata(self, request: web.Request) -> web.Response:
        self.metadata_calls += 1
        return web.json_response({
            "name": request.match_info["name"], "versions": ["v1"], "platform": "",
            "inputs": [{"name": name, "datatype": "FP64", "shape": [-1, 1]} for name in IRIS],
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
        })

    async def infer(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)  # aiohttp undoes a Content-Encoding itself
        rows = body["inputs"][0]["shape"][0]
        request_id = body.get("id") or str(uuid.uuid4())
        reply = json.dumps({
            "model_name": request.match_info["name"], "model_version": request.match_info.get("version", "v1"),
            "id": request_id, "parameters": {},
            "outputs": [{"name": "predict", "shape": [rows, 1], "datatype": "INT64",
                         "parameters": {"content_type": "np"}, "data": [i % 3 for i in range(rows)]}],
        }).encode()
        return self._reply(request, reply, {"ce-requestid": request_id, "ce-id": request_id})

    async def invocations(self, request: web.Request) -> web.Response:
        body = await request.json()
        rows = len(body["dataframe_split"]["data"])
        return self._reply(request, json.dumps({"predictions": [i % 2 for i in range(rows)]}).encode(), {})

    def _reply(self, request: web.Request, reply: bytes, headers: dict[str, str]) -> web.Response:
        headers = {"Content-Type": "application/json", **headers}
        if len(reply) > GZIP_OVER and "gzip" in request.headers.get("Accept-Encoding", ""):
            self.sent = gzip.compress(reply)
            return web.Response(body=self.sent, headers={**headers, "Content-Encoding": "gzip"})
        self.sent = reply
        return web.Response(body=reply, headers=headers)


@pytest.fixture(scope="module")
def server(loop: LoopThread) -> Iterator[ModelServer]:
    double = ModelServer()
    runner = loop.run(double.start())
    yield double
    loop.run(runner.cleanup())


@pytest.fixture
def proxy(loop: LoopThread, server: ModelServer) -> Iterator[Running]:
    with sidecar(loop, f"http://127.0.0.1:{server.port}", server) as running:  # type: ignore[arg-type]
        yield running


def iris_request(rows: int, **extra: Any) -> dict[str, Any]:
    return {**extra, "inputs": [{"name": "input-0", "shape": [rows, 4], "datatype": "FP64",
                                 "data": [[5.1 + i, 3.5, 1.4, 0.2] for i in range(rows)]}]}


def decoded_events(running: Running) -> list[tuple[str, dict[str, Any]]]:
    return [(d.record, d.value) for d in (default_catalog().decode(raw)
                                          for raw in events_sent(running.emitter.transport))]  # type: ignore[arg-type]


def test_a_gzip_reply_gives_its_outputs_and_version_and_is_relayed_byte_for_byte(
    proxy: Running, server: ModelServer
) -> None:
    with httpx.Client() as client:  # httpx asks for gzip by default, as requests does
        with client.stream("POST", f"{proxy.url}/v2/models/iris/infer", json=iris_request(400)) as reply:
            raw = b"".join(reply.iter_raw())
    assert reply.headers["content-encoding"] == "gzip" and raw == server.sent
    response = proxy.events(reply.headers["x-prediction-id"])["InferenceResponse"]
    assert (response["body_size"], response["body_sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert response["content_encoding"] == "gzip" and response["error"] is None
    assert response["model_version"] == "v1" and response["outputs"] == {"predict": 0.0}
    assert response["row_count"] == 400 and [row["predict"] for row in response["output_rows"][:4]] == [0, 1, 2, 0]


def test_a_batch_gives_a_row_of_features_per_row_named_by_the_metadata(proxy: Running, server: ModelServer) -> None:
    reply = httpx.post(f"{proxy.url}/v2/models/iris/infer", json=iris_request(50))
    assert reply.status_code == 200
    events = proxy.events(reply.headers["x-prediction-id"])
    request, response = events["InferenceRequest"], events["InferenceResponse"]
    assert (request["row_count"], len(request["feature_rows"]), request["rows_truncated"]) == (50, 50, False)
    assert request["feature_rows"][49] == {"sepal_length": 54.1, "sepal_width": 3.5, "petal_length": 1.4,
                                           "petal_width": 0.2}
    assert request["features"] == request["feature_rows"][0]
    assert (response["row_count"], len(response["output_rows"])) == (50, 50)


def test_a_gzip_request_gives_its_features(proxy: Running, server: ModelServer) -> None:
    compressed = gzip.compress(json.dumps(iris_request(3)).encode())
    reply = httpx.post(f"{proxy.url}/v2/models/iris/infer", content=compressed,
                       headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert reply.status_code == 200
    request = proxy.events(reply.headers["x-prediction-id"])["InferenceRequest"]
    assert request["content_encoding"] == "gzip" and request["row_count"] == 3
    assert request["features"]["sepal_length"] == 5.1
    assert request["body_sha256"] == hashlib.sha256(compressed).hexdigest()


def test_mlflow_batches_give_every_row(proxy: Running) -> None:
    rows = [[float(i), "Oslo"] for i in range(DEFAULT_MAX_ROWS + 5)]
    reply = httpx.post(f"{proxy.url}/invocations", json={"dataframe_split": {"columns": ["age", "city"],
                                                                             "data": rows}})
    assert reply.status_code == 200
    events = proxy.events(reply.headers["x-prediction-id"])
    request, response = events["InferenceRequest"], events["InferenceResponse"]
    assert (request["endpoint"], request["row_count"], request["rows_truncated"]) == (
        "/invocations", DEFAULT_MAX_ROWS + 5, True)
    assert len(request["feature_rows"]) == DEFAULT_MAX_ROWS and request["feature_rows"][7] == {"age": 7.0,
                                                                                               "city": "Oslo"}
    assert response["row_count"] == DEFAULT_MAX_ROWS + 5 and response["output_rows"][:3] == [
        {"output": 0.0}, {"output": 1.0}, {"output": 0.0}]


def test_a_versioned_path_is_recorded_under_the_models_canonical_endpoint(proxy: Running) -> None:
    reply = httpx.post(f"{proxy.url}/v2/models/iris/versions/v7/infer", json=iris_request(1, id="client-42"))
    assert reply.status_code == 200 and reply.headers["x-model-version"] == "v7"
    events = proxy.events(reply.headers["x-prediction-id"])
    request, response = events["InferenceRequest"], events["InferenceResponse"]
    assert (request["endpoint"], request["path"]) == ("/v2/models/iris/infer", "/v2/models/iris/versions/v7/infer")
    assert (request["model_name"], request["model_version"]) == ("iris", "v7")
    assert (response["endpoint"], response["model_version"]) == ("/v2/models/iris/infer", "v7")
    assert request["request_id"] == response["request_id"] == "client-42"


def test_the_servers_request_id_is_recorded_on_the_response(proxy: Running) -> None:
    reply = httpx.post(f"{proxy.url}/v2/models/iris/infer", json=iris_request(1))
    events = proxy.events(reply.headers["x-prediction-id"])
    assert events["InferenceRequest"]["request_id"] is None
    assert events["InferenceResponse"]["request_id"] == reply.headers["ce-requestid"] == reply.json()["id"]


HEALTH_AND_METADATA = {"/v2/health/ready": "health", "/v2/health/live": "health", "/v2/models/iris/ready": "health",
                       "/ping": "health", "/v2": "metadata", "/v2/models/iris": "metadata"}


def counted(kind: str) -> float:
    return REGISTRY.get_sample_value("provline_sidecar_non_inference_total", {"kind": kind}) or 0.0


def test_health_and_metadata_calls_are_relayed_and_counted_but_not_recorded(
    proxy: Running, server: ModelServer
) -> None:
    before = {kind: counted(kind) for kind in ("health", "metadata")}
    for path in HEALTH_AND_METADATA:
        direct = httpx.get(f"http://127.0.0.1:{server.port}{path}")
        relayed = httpx.get(f"{proxy.url}{path}")
        assert (relayed.status_code, relayed.content) == (direct.status_code, direct.content), path
        assert "x-prediction-id" not in relayed.headers and "x-model-version" not in relayed.headers, path
    assert server.seen_paths[-1] == "/ping"
    prediction = httpx.post(f"{proxy.url}/v2/models/iris/infer", json=iris_request(1))  # recorded after them
    proxy.events(prediction.headers["x-prediction-id"])
    recorded = {value["prediction_id"] for _, value in decoded_events(proxy)}
    assert recorded == {prediction.headers["x-prediction-id"]}
    assert counted("health") == before["health"] + 4 and counted("metadata") == before["metadata"] + 2


def test_a_policy_may_record_health_calls_too(loop: LoopThread, server: ModelServer) -> None:
    with sidecar(loop, f"http://127.0.0.1:{server.port}", server,  # type: ignore[arg-type]
                 record_non_inference=True) as running:
        reply = httpx.get(f"{running.url}/v2/health/ready")
        assert reply.status_code == 200
        events = running.events(reply.headers["x-prediction-id"])
    assert events["InferenceRequest"]["endpoint"] == "/v2/health/ready"
    assert events["InferenceResponse"]["status"] == 200


def test_each_event_is_stamped_when_its_half_happened_not_when_it_was_recorded(proxy: Running) -> None:
    """The request event said when the recorder got to it, after the client already had the reply."""
    from datetime import UTC, datetime

    sent = datetime.now(UTC)
    reply = httpx.post(f"{proxy.url}/v2/models/iris/infer", json=iris_request(1))
    replied = datetime.now(UTC)
    events = proxy.events(reply.headers["x-prediction-id"])
    request, response = events["InferenceRequest"], events["InferenceResponse"]
    assert sent <= request["event_time"] <= response["event_time"] <= replied
    # the reply's time is the request's plus the upstream's latency (to the microsecond the events keep)
    apart = response["event_time"] - request["event_time"]
    assert abs(apart.total_seconds() * 1e6 - response["latency_us"]) <= 2
