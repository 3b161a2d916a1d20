"""Model version resolution order, the KServe metadata cache and the deployment index."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from provline.sidecar.model_version import DeploymentIndex, ModelMetadata, ModelVersionResolver, model_metadata
from provline.sidecar.routes import Route, classify

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def deployment(version: str, minutes: int, action: str = "DEPLOY", endpoint: str = "/predict") -> dict:
    return {"endpoint": endpoint, "model_name": "churn", "model_version": version, "action": action,
            "event_time": T0 + timedelta(minutes=minutes)}


def route(path: str, method: str = "POST") -> Route:
    return classify(method, path)


def test_kserve_metadata_names_the_version_inputs_and_outputs() -> None:
    assert model_metadata({"name": "churn", "versions": ["3"]}) == ModelMetadata("3")
    assert model_metadata({"versions": ["1", "2"]}).version is None  # ambiguous: which one served?
    assert model_metadata({"versions": []}) == model_metadata([1]) == ModelMetadata()
    iris = {"name": "iris", "versions": [], "platform": "sklearn",
            "inputs": [{"name": n, "datatype": "FP64", "shape": [-1]} for n in ("sl", "sw", "pl", "pw")],
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}]}
    assert model_metadata(iris) == ModelMetadata(None, ("sl", "sw", "pl", "pw"), ("predict",))
    assert model_metadata({"inputs": [{"datatype": "FP64"}], "outputs": "x"}) == ModelMetadata()


def test_the_latest_deployment_wins_and_a_retirement_clears_it() -> None:
    index = DeploymentIndex()
    index.observe(deployment("2", 5))
    index.observe(deployment("1", 1))  # older, read late
    assert index.latest("/predict") == ("churn", "2")
    index.observe(deployment("1", 6, "RETIRE"))  # not the current one
    assert index.latest("/predict") == ("churn", "2")
    index.observe(deployment("2", 7, "RETIRE"))
    assert index.latest("/predict") is None and index.latest("/other") is None


def test_resolution_order_header_kserve_deployment_static() -> None:
    fetched: list[str] = []

    async def fetch(model: str) -> dict:
        fetched.append(model)
        return {"versions": ["9"]}

    async def scenario() -> None:
        index = DeploymentIndex()
        resolver = ModelVersionResolver(static="static", fetch_metadata=fetch, deployments=index)
        path = "/v2/models/churn/infer"
        infer = route(path)
        assert await resolver.resolve(header="h", reply_version="r", route=infer, endpoint=path) == "h"
        assert await resolver.resolve(header=None, reply_version="r", route=infer, endpoint=path) == "r"
        assert await resolver.resolve(header=None, reply_version=None, route=route("/v2/models/churn/versions/4/infer"),
                                      endpoint=path) == "4"
        assert resolver.known(header=None, route=infer, endpoint=path) == "static"  # nothing fetched yet
        both = await asyncio.gather(*(resolver.resolve(header=None, reply_version=None, route=infer, endpoint=path)
                                      for _ in range(5)))
        assert both == ["9"] * 5 and fetched == ["churn"]  # one fetch, then the cache
        assert resolver.known(header=None, route=infer, endpoint=path) == "9"
        assert (await resolver.metadata(infer)).version == "9" and fetched == ["churn"]
        plain = route("/predict")
        assert await resolver.resolve(header=None, reply_version=None, route=plain, endpoint="/predict") == "static"
        assert await resolver.metadata(plain) == ModelMetadata() and fetched == ["churn"]  # not KServe: no fetch
        index.observe(deployment("2", 1))
        assert await resolver.resolve(header=None, reply_version=None, route=plain, endpoint="/predict") == "2"
        assert resolver.model_name(plain, "/predict") == "churn"

    asyncio.run(scenario())


def test_a_failing_metadata_fetch_falls_through_and_is_cached() -> None:
    calls = 0

    async def broken(model: str) -> dict:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    async def scenario() -> None:
        resolver = ModelVersionResolver(static=None, fetch_metadata=broken, deployments=None)
        for _ in range(3):
            assert await resolver.resolve(header=None, reply_version=None, route=route("/v2/models/m/infer"),
                                          endpoint="e") is None

    asyncio.run(scenario())
    assert calls == 1


def test_an_expired_version_is_used_while_it_is_refreshed() -> None:
    calls: list[str] = []

    async def scenario() -> None:
        slow_refresh = asyncio.Event()

        async def fetch(model: str) -> dict:
            calls.append(model)
            if len(calls) > 1:
                await slow_refresh.wait()
            return {"versions": [str(len(calls))]}

        resolver = ModelVersionResolver(static=None, fetch_metadata=fetch, deployments=None, ttl_s=0.0)
        path = "/v2/models/churn/infer"
        infer = route(path)
        assert await resolver.resolve(header=None, reply_version=None, route=infer, endpoint=path) == "1"
        # expired at once (ttl 0): answered without waiting for the refresh, which is stuck
        stale = resolver.resolve(header=None, reply_version=None, route=infer, endpoint=path)
        assert await asyncio.wait_for(stale, 1.0) == "1"
        slow_refresh.set()
        await asyncio.sleep(0.05)
        assert await resolver.resolve(header=None, reply_version=None, route=infer, endpoint=path) == "2"

    asyncio.run(scenario())
    assert calls[:2] == ["churn", "churn"]
