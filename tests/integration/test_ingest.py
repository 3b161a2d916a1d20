"""``provline ingest`` on the real broker and chDB store: KServe and Seldon payload loggers' CloudEvents
become the traces the sidecar makes of the same exchange; bad events are refused and nothing else lost."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from prometheus_client import REGISTRY

from provline.producers import Emitter
from provline.schemas import Topics
from provline.sidecar import SidecarApp, SidecarSettings
from provline.sidecar.ingest import IngestApp
from provline.sidecar.settings import IngestSettings
from provline.sink.settings import ServeSettings
from provline.sink.store import open_store
from provline.sink.writer import SinkWriter
from tests import helpers
from tests.helpers import LoopThread, consume_events
from tests.integration.test_processors_join import start_worker
from tests.integration.test_sidecar_proxy import PREDICTION, Upstream, start_server, stop_server

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0
# The client's request, as compact JSON: a structured event's ``data`` is hashed as its compact form,
# so with these bytes all three modes hash what the sidecar hashes.
REQUEST = orjson.dumps({"id": "order-1", "inputs": [
    {"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [5.1, 3.5, 1.4]}]})
KSERVE_TYPE = "org.kubeflow.serving.inference.{}"
SELDON_TYPE = "io.seldon.serving.inference.{}"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"




def metric(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


@contextmanager
def ingest(loop: LoopThread, settings: IngestSettings,
           emitter: Emitter | None = None) -> Iterator[tuple[str, IngestApp]]:
    app = IngestApp(settings, emitter)
    server, task, url = loop.run(start_server(app))
    try:
        yield url, app
    finally:
        loop.run(stop_server(server, task), timeout=60)


def kafka_settings(bootstrap: str, topics: Topics, spool: Path, **ingest_options: Any) -> IngestSettings:
    return IngestSettings(kafka={"bootstrap": bootstrap}, topics={"prefix": topics.prefix},
                          emitter={"spool_dir": spool, "producer_name": "ingest-test"},
                          ingest={"endpoint": "/v2/models/{service}/infer", "model_version": "7", **ingest_options})


def kserve(half: str, event_id: str, data: bytes | Any, **extra: str) -> CloudEvent:
    """What KServe's agent sends (pkg/logger/worker.go): its extensions, and the metadata headers as JSON."""
    return CloudEvent({
        "id": event_id, "type": KSERVE_TYPE.format(half), "source": "http://localhost:9081/", "specversion": "1.0",
        "inferenceservicename": "iris", "namespace": "models", "component": "predictor", "endpoint": "default",
        "metadata": json.dumps({"Traceparent": [TRACEPARENT]}), "datacontenttype": "application/json", **extra,
    }, data)


def seldon(half: str, puid: str, body: bytes) -> tuple[dict[str, str], bytes]:
    """What Seldon Core v1's executor sends (executor/logger): binary mode, its own Ce- headers."""
    return {"Ce-Id": puid, "Ce-Specversion": "1.0", "Ce-Source": "http://iris-default.seldon:8000/",
            "Ce-Type": SELDON_TYPE.format(half), "Ce-Modelid": "iris", "Ce-Inferenceservicename": "iris",
            "Ce-Namespace": "seldon", "Ce-Endpoint": "default", "Ce-Requestid": puid,
            "Content-Type": "application/json", "traceparent": TRACEPARENT}, body


def post(url: str, headers: dict[str, str], body: bytes | str) -> httpx.Response:
    return httpx.post(url, headers=headers, content=body, timeout=30)




TRACE_FIELDS = ("endpoint", "model_name", "model_version", "request_sha256", "response_sha256", "status",
                "features", "outputs", "feature_rows", "output_rows", "row_count", "request_id", "complete", "missing",
                "traceparent")


def test_kserve_binary_and_structured_and_seldon_events_become_the_sidecars_trace_and_retries_no_second_one(
    kafka_bootstrap: str, topics: Topics, chdb_path: str, tmp_path: Path
) -> None:
    loop = LoopThread()
    upstream = Upstream()
    runner = loop.run(upstream.start())
    worker = start_worker(kafka_bootstrap, topics, tmp_path / "processors", tmp_path / "worker.log")
    try:
        # The exchange through the sidecar, in front of the model server double.
        sidecar = SidecarApp(SidecarSettings(
            sidecar={"upstream": f"http://127.0.0.1:{upstream.port}", "kserve_metadata": False},
            kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
            emitter={"spool_dir": tmp_path / "sidecar-spool", "producer_name": "sidecar-test"}))
        server, task, sidecar_url = loop.run(start_server(sidecar))
        try:
            reply = httpx.post(f"{sidecar_url}/v2/models/iris/infer", content=REQUEST, timeout=30, headers={
                "Content-Type": "application/json", "X-Request-ID": "via-sidecar", "traceparent": TRACEPARENT})
            assert reply.status_code == 200 and reply.content == PREDICTION
        finally:
            loop.run(stop_server(server, task), timeout=60)

        # The same exchange as the loggers report it, in each mode; every event sent twice (a retry).
        with ingest(loop, kafka_settings(kafka_bootstrap, topics, tmp_path / "spool")) as (url, _):
            sends: list[tuple[dict[str, str], bytes]] = [
                to_binary(kserve("request", "kb-1", REQUEST)), to_binary(kserve("response", "kb-1", PREDICTION)),
                to_structured(kserve("request", "ks-1", orjson.loads(REQUEST))),  # data: a JSON value
                to_structured(kserve("response", "ks-1", PREDICTION)),  # bytes: the SDK sends data_base64
                seldon("request", "sd-1", REQUEST), seldon("response", "sd-1", PREDICTION),
            ]
            answers = [post(url, headers, body) for headers, body in sends + sends]
            assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]
            ingested = {a.json()["prediction_id"] for a in answers}
            assert len(ingested) == 3  # request, response and their retries of one exchange share the prediction id

        wanted = ingested | {"via-sidecar"}
        traces = consume(kafka_bootstrap, topics.traces,
                         lambda events: wanted <= {v["prediction_id"] for _, v in events})
    finally:
        worker.stop()
        loop.run(runner.cleanup())
        loop.close()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for kind, value in traces:
        assert kind == "PredictionTrace"
        by_id.setdefault(value["prediction_id"], []).append(value)
    assert all(len(by_id[p]) == 1 for p in wanted), {p: len(by_id[p]) for p in wanted}  # retries: no second trace

    # Stored in the chDB store by the sink, the traces are identical in content.
    sink = ServeSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix},
                         store={"url": chdb_path}, sink={"consumer_group": f"sink-{uuid.uuid4().hex[:8]}",
                                                         "batch_max_s": 0.2})
    writer_client, store = open_store(chdb_path), open_store(chdb_path)
    from provline.sink.store import migrate

    migrate(store)
    writer = SinkWriter(sink, writer_client)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,))
    thread.start()
    try:
        rows = wait_until(lambda: (found := store.query(
            "SELECT prediction_id, payload FROM prediction_traces").result_rows) and len(found) >= 4 and found,
            "four traces in the store")
    finally:
        stop.set()
        thread.join(30)
        writer_client.close()
    stored = {prediction_id: json.loads(payload) for prediction_id, payload in rows}
    store.close()
    expected = {name: stored["via-sidecar"].get(name) for name in TRACE_FIELDS}
    assert expected["request_sha256"] and expected["features"] and expected["outputs"]
    assert (expected["model_name"], expected["model_version"], expected["request_id"]) == ("iris", "7", "order-1")
    for prediction_id in ingested:
        assert {name: stored[prediction_id].get(name) for name in TRACE_FIELDS} == expected, prediction_id


def test_bad_events_get_a_4xx_saying_why_and_other_traffic_is_still_recorded(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    loop = LoopThread()
    settings = kafka_settings(kafka_bootstrap, topics, tmp_path / "spool", max_body_bytes=4096)
    bad: list[tuple[str, dict[str, str], bytes, int, str]] = [
        ("GET", {}, b"", 405, "method_not_allowed"),
        ("POST", {"Content-Type": "application/json"}, REQUEST, 400, "not_a_cloudevent"),
        ("POST", {"Ce-Type": KSERVE_TYPE.format("request")}, REQUEST, 400, "missing_attribute"),
        ("POST", {"Ce-Id": "x", "Ce-Type": "com.example.unknown"}, REQUEST, 400, "unknown_type"),
        ("POST", {"Content-Type": "application/cloudevents+json"}, b"{nope", 400, "invalid_json"),
        ("POST", {"Content-Type": "application/cloudevents+json"},
         json.dumps({"id": "b", "type": KSERVE_TYPE.format("request"), "data_base64": "%%%"}).encode(), 400,
         "invalid_base64"),
        ("POST", {"Ce-Id": "big", "Ce-Type": KSERVE_TYPE.format("request")}, b"x" * 5000, 413, "body_too_large"),
    ]
    before = {reason: metric("provline_ingest_events_refused_total", reason=reason) for *_, reason in bad}
    received = metric("provline_ingest_events_received_total")
    recorded = metric("provline_ingest_events_recorded_total")
    good: list[str] = []
    try:
        with ingest(loop, settings) as (url, _):
            for index, (method, headers, body, status, reason) in enumerate(bad):
                answer = httpx.request(method, url, headers=headers, content=body, timeout=30)
                assert answer.status_code == status, (reason, answer.text)
                assert answer.json()["reason"] == reason and len(answer.json()["error"]) > 30
                # Between any two bad ones, a good exchange: recorded.
                for half, data in (("request", REQUEST), ("response", PREDICTION)):
                    ok = post(url, *to_binary(kserve(half, f"good-{index}", data)))
                    assert ok.status_code == 200
                good.append(ok.json()["prediction_id"])
            assert httpx.get(f"{url}/readyz").status_code == 200
            assert "provline_ingest_events_refused_total" in httpx.get(f"{url}/metrics").text
        events = consume(kafka_bootstrap, topics.inference,
                         lambda events: sum(v.get("prediction_id") in good for _, v in events) >= 2 * len(good))
    finally:
        loop.close()
    for *_, reason in bad:
        assert metric("provline_ingest_events_refused_total", reason=reason) == before[reason] + 1, reason
    assert metric("provline_ingest_events_received_total") - received == len(bad) + 2 * len(good)
    assert metric("provline_ingest_events_recorded_total") - recorded == 2 * len(good)
    recorded = [(kind, v["prediction_id"]) for kind, v in events if kind.startswith("Inference")]
    assert sorted(recorded) == sorted((kind, p) for p in good for kind in ("InferenceRequest", "InferenceResponse"))
    assert all(v["features"] == {"x[0]": 5.1, "x[1]": 3.5, "x[2]": 1.4}
               for kind, v in events if kind == "InferenceRequest")


def test_seldon_structured_base64_body_is_hashed_as_received(kafka_bootstrap: str, topics: Topics,
                                                             tmp_path: Path) -> None:
    loop = LoopThread()
    try:
        with ingest(loop, kafka_settings(kafka_bootstrap, topics, tmp_path / "spool")) as (url, _):
            document = {"specversion": "1.0", "id": "sd-b64", "source": "s", "type": SELDON_TYPE.format("request"),
                        "modelid": "iris", "requestid": "puid-b64", "datacontenttype": "application/json",
                        "data_base64": base64.b64encode(REQUEST).decode()}
            answer = post(url, {"Content-Type": "application/cloudevents+json"}, json.dumps(document))
            assert answer.status_code == 200
            pid = answer.json()["prediction_id"]
        events = consume(kafka_bootstrap, topics.inference, lambda events: any(
            v.get("prediction_id") == pid for _, v in events))
    finally:
        loop.close()
    (request,) = [v for kind, v in events if kind == "InferenceRequest"]
    import hashlib

    assert request["body_sha256"] == hashlib.sha256(REQUEST).hexdigest() and request["body"] == REQUEST
    assert (request["model_name"], request["request_id"]) == ("iris", "order-1")  # the body's own id first


def test_the_capture_policy_redacts_as_the_sidecar_does(tmp_path: Path) -> None:
    """The same exchange, redacted under one policy and key by the sidecar and by ingest: the same event fields."""
    from tests.helpers import decoded, memory_emitter
    from tests.integration.test_sidecar_proxy import sidecar

    policy = tmp_path / "policy.yaml"
    policy.write_text("inputs: {drop: [ssn]}\noutputs: {mask: [label]}\nheaders: {hash: [traceparent]}\n"
                      "capture: redacted\n")
    key = "a-long-redaction-key-for-this-test-only"
    body = orjson.dumps({"id": "order-9", "parameters": {"content_type": "pd"}, "inputs": [
        {"name": "age", "shape": [1], "datatype": "INT64", "data": [41]},
        {"name": "ssn", "shape": [1], "datatype": "BYTES", "data": ["123-45-6789"]}]})
    loop = LoopThread()
    upstream = Upstream()
    runner = loop.run(upstream.start())
    try:
        side_emitter = memory_emitter("sidecar-redaction")[0]
        with sidecar(loop, f"http://127.0.0.1:{upstream.port}", upstream, side_emitter, kserve_metadata=False,
                     policy_file=policy, redaction_key=key) as running:
            reply = httpx.post(f"{running.url}/v2/models/iris/infer", content=body, timeout=30, headers={
                "Content-Type": "application/json", "X-Request-ID": "side-9", "traceparent": TRACEPARENT})
            assert reply.status_code == 200
            side = running.events("side-9")
        ingest_emitter = memory_emitter("ingest-redaction")[0]
        settings = IngestSettings(ingest={"endpoint": "/v2/models/{service}/infer", "model_version": "7"},
                                  capture={"policy_file": policy, "redaction_key": key})
        with ingest(loop, settings, ingest_emitter) as (url, _):
            for half, data in (("request", body), ("response", PREDICTION)):
                assert post(url, *to_binary(kserve(half, "redacted-9", data))).status_code == 200
        ingested = {kind: value for kind, value in decoded(ingest_emitter) if kind.startswith("Inference")}
    finally:
        loop.run(runner.cleanup())
        loop.close()
    compared = ("endpoint", "model_name", "model_version", "body_size", "body_sha256", "body", "body_truncated",
                "features", "outputs", "parse_error", "traceparent", "request_id", "row_count", "status")
    for kind in ("InferenceRequest", "InferenceResponse"):
        # A reply's request id: the sidecar has it only when the server echoes one (a body id, ce-id or
        # X-Request-ID header); the logger's event id is KServe's request id, so ingest records it.
        names = compared if kind == "InferenceRequest" else tuple(n for n in compared if n != "request_id")
        expected = {name: side[kind].get(name) for name in names}
        assert {name: ingested[kind].get(name) for name in names} == expected, kind
    assert ingested["InferenceResponse"]["request_id"] == "redacted-9"
    request = ingested["InferenceRequest"]
    assert b"123-45-6789" not in request["body"] and "ssn" not in request["features"]
    assert request["body_sha256"].startswith("hmac-sha256:") and request["traceparent"].startswith("hmac-sha256:")
    assert ingested["InferenceResponse"]["outputs"]["label"] == "****"


def consume(bootstrap: str, topic: str, done, timeout: float = DEADLINE_S) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    return consume_events(bootstrap, topic, done, timeout)


def wait_until(condition, what: str, timeout: float = DEADLINE_S):  # type: ignore[no-untyped-def]
    return helpers.wait_until(condition, what, timeout)
