"""Model version resolution against real servers: KServe V2 metadata, and Deployment events from Kafka."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from aiohttp import web

from provline.producers import JobSettings, build_emitter
from provline.schemas import Topics, default_catalog
from provline.sidecar import SidecarApp, SidecarSettings
from tests.helpers import LoopThread, events_sent, memory_emitter, serve_app
from tests.integration.test_sidecar_proxy import start_server, stop_server

pytestmark = pytest.mark.integration


class KServe:
    """A KServe V2 model server double: metadata names version 5; counts metadata requests."""

    def __init__(self) -> None:
        self.metadata_calls = 0
        self.port = 0

    async def metadata(self, request: web.Request) -> web.Response:
        self.metadata_calls += 1
        return web.json_response({"name": request.match_info["name"], "versions": ["5"], "platform": "x"})

    async def infer(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"model_name": "churn", "outputs": [
            {"name": "score", "shape": [1, 1], "datatype": "FP32", "data": [0.7]}]})

    async def plain(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"score": 0.1})

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/v2/models/{name}", self.metadata)
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        app.router.add_post("/predict", self.plain)
        runner, self.port = await serve_app(app)
        return runner


@pytest.fixture
def served() -> Iterator[tuple[LoopThread, KServe]]:
    loop = LoopThread()
    server = KServe()
    runner = loop.run(server.start())
    yield loop, server
    loop.run(runner.cleanup())
    loop.close()


def events_of(emitter: object, prediction_id: str, timeout: float = 10.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        decoded = [default_catalog().decode(raw) for raw in events_sent(emitter.transport)]  # type: ignore[attr-defined]
        found = {d.record: d.value for d in decoded if d.value.get("prediction_id") == prediction_id}
        if len(found) >= 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_kserve_metadata_gives_the_version_once_fetched_and_cached(served: tuple[LoopThread, KServe]) -> None:
    loop, kserve = served
    emitter, _ = memory_emitter("t")
    app = SidecarApp(SidecarSettings(sidecar={"upstream": f"http://127.0.0.1:{kserve.port}",
                                              "model_version": "static"}), emitter)
    server, task, url = loop.run(start_server(app))
    try:
        first = httpx.post(f"{url}/v2/models/churn/infer", json={"inputs": [
            {"name": "age", "shape": [1], "datatype": "INT64", "data": [41]}]})
        assert first.status_code == 200
        events = events_of(emitter, first.headers["x-prediction-id"])
        assert events["InferenceRequest"]["model_version"] == events["InferenceResponse"]["model_version"] == "5"
        assert events["InferenceRequest"]["model_name"] == "churn"
        assert events["InferenceRequest"]["features"] == {"age": 41.0}
        assert events["InferenceResponse"]["outputs"] == {"score": 0.7}
        second = httpx.post(f"{url}/v2/models/churn/infer", json={"inputs": []})
        assert second.headers["x-model-version"] == "5"  # known from the cache: told to the client too
        assert events_of(emitter, second.headers["x-prediction-id"])["InferenceResponse"]["model_version"] == "5"
        plain = httpx.post(f"{url}/predict", json={"x": 1})
        assert plain.headers["x-model-version"] == "static"  # not KServe: the static fallback
    finally:
        loop.run(stop_server(server, task))
    assert kserve.metadata_calls == 1


def test_the_latest_deployment_event_names_the_endpoints_version(
    served: tuple[LoopThread, KServe], kafka_bootstrap: str, topics: Topics
) -> None:
    loop, kserve = served
    sections = {"kafka": {"bootstrap": kafka_bootstrap}, "topics": {"prefix": topics.prefix}}
    with build_emitter(JobSettings(**sections), producer_name="deployer") as deployer:
        for version, action in (("1", "DEPLOY"), ("2", "PROMOTE")):
            deployer.emit("Deployment", {"model_name": "churn", "model_version": version, "environment": "prod",
                                         "endpoint": "/predict", "action": action})
    emitter, _ = memory_emitter("t")
    app = SidecarApp(SidecarSettings(sidecar={"upstream": f"http://127.0.0.1:{kserve.port}",
                                              "follow_deployments": True}, **sections), emitter)
    server, task, url = loop.run(start_server(app))
    try:
        deadline = time.monotonic() + 30
        while True:  # the follower reads the lineage topic in the background
            reply = httpx.post(f"{url}/predict", json={"x": 1})
            if reply.headers.get("x-model-version") == "2" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert reply.headers.get("x-model-version") == "2"
        events = events_of(emitter, reply.headers["x-prediction-id"])
        assert events["InferenceResponse"]["model_version"] == "2"
        assert events["InferenceRequest"]["model_name"] == "churn"
    finally:
        loop.run(stop_server(server, task))
