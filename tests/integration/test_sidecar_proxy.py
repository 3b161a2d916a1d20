"""The sidecar served for real (uvicorn on a socket) in front of a real aiohttp upstream."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from aiohttp import web
from confluent_kafka import Consumer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provline.producers import Emitter, JobSettings, build_emitter
from provline.schemas import Topics, default_catalog
from provline.schemas.frames import events_in
from provline.sidecar import SidecarApp, SidecarSettings
from provline.sidecar.headers import HOP_BY_HOP, is_valid_traceparent
from provline.sidecar.server import http_limits, uvicorn_config
from provline.sidecar.settings import CaptureSettings
from tests.helpers import LoopThread, events_sent, memory_emitter, sent, serve_app

pytestmark = pytest.mark.integration

CAPTURE_OPTIONS = frozenset(CaptureSettings.model_fields)

T = TypeVar("T")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PREDICTION = b'{"score": 0.75, "label": "cat", "ok": true, "nested": {"a": 1}}'


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class Upstream:
    """A model server double: records what it received; ``/slow``, ``/gzip`` and ``/chunked`` misbehave."""

    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner, self.port = await serve_app(app)
        return runner

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path,
                              [(k.decode(), v.decode()) for k, v in request.raw_headers], body))
        if request.path.endswith("/slow"):
            await asyncio.sleep(5)
        if request.path.endswith("/gzip"):
            return web.Response(body=gzip.compress(PREDICTION), headers={
                "Content-Encoding": "gzip", "Content-Type": "application/json"})
        if request.path.endswith("/chunked"):
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"one,", b"two,", b"three"):
                await response.write(part)
            await response.write_eof()
            return response
        response = web.Response(status=int(request.query.get("status", "200")), body=PREDICTION, headers={
            "Content-Type": "application/json", "X-Model-Version": "7", "X-Custom": "yes",
            "Keep-Alive": "timeout=5", "Connection": "X-Hop", "X-Hop": "secret",
            "Proxy-Authenticate": 'Basic realm="x"',
        })
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response


@dataclass
class Running:
    url: str
    emitter: Emitter
    upstream: Upstream

    def events(self, prediction_id: str, count: int = 2, timeout: float = 5.0) -> dict[str, dict]:
        """This prediction's events, waiting for ``count`` of them (they are emitted after the reply)."""
        def found() -> dict[str, dict]:
            decoded = [default_catalog().decode(raw) for raw in events_sent(self.emitter.transport)]  # type: ignore[arg-type]
            return {d.record: d.value for d in decoded if d.value["prediction_id"] == prediction_id}
        return wait_for(found, lambda events: len(events) >= count, timeout)

    def all_events(self, prediction_id: str) -> list[str]:
        decoded = [default_catalog().decode(raw) for raw in sent(self.emitter)]
        return [d.record for d in decoded if d.value["prediction_id"] == prediction_id]


def wait_for(produce: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


async def start_server(app: Any, *, lifespan: str = "on") -> tuple[uvicorn.Server, asyncio.Task, str]:
    """Serve ``app`` on a free port; a SidecarApp with the HTTP limits its settings name, as serve_sidecar does."""
    limits = http_limits(app.settings.sidecar) if isinstance(app, SidecarApp) else None
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=0, lifespan=lifespan, limits=limits))
    task = asyncio.get_running_loop().create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("the sidecar did not start; see the log")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


async def stop_server(server: uvicorn.Server, task: asyncio.Task) -> None:
    server.should_exit = True
    await task


@pytest.fixture(scope="module")
def upstream(loop: LoopThread) -> Iterator[Upstream]:
    double = Upstream()
    runner = loop.run(double.start())
    yield double
    loop.run(runner.cleanup())


@contextmanager
def sidecar(loop: LoopThread, upstream_url: str, upstream: Upstream, emitter: Emitter | None = None,
            **options: Any) -> Iterator[Running]:
    emitter = emitter or memory_emitter("sidecar-test")[0]
    capture = {name: options.pop(name) for name in list(options) if name in CAPTURE_OPTIONS}
    app = SidecarApp(SidecarSettings(sidecar={"upstream": upstream_url, **options}, capture=capture), emitter)
    server, task, url = loop.run(start_server(app))
    try:
        yield Running(url, emitter, upstream)
    finally:
        loop.run(stop_server(server, task))


@pytest.fixture(scope="module")
def proxy(loop: LoopThread, upstream: Upstream) -> Iterator[Running]:
    """One sidecar for the happy-path tests; they tell their events apart by prediction id."""
    with sidecar(loop, f"http://127.0.0.1:{upstream.port}/base", upstream, max_capture_bytes=16) as running:
        yield running


def end_to_end(headers: httpx.Headers) -> list[tuple[str, str]]:
    connection = {v.strip().lower() for v in ",".join(headers.get_list("connection")).split(",")}
    drop = {h.decode() for h in HOP_BY_HOP} | connection | {"date", "x-prediction-id"}
    return sorted((k, v) for k, v in headers.multi_items() if k not in drop)


def test_reply_is_the_upstream_reply_and_the_upstream_sees_the_request(proxy: Running, upstream: Upstream) -> None:
    body = json.dumps({"age": 41, "city": "Oslo", "tags": [1]}).encode()
    sent = {"Content-Type": "application/json", "X-Request-ID": "req-1", "X-Client-ID": "client-9",
            "traceparent": TRACEPARENT, "Connection": "keep-alive, X-Drop", "X-Drop": "1",
            "Proxy-Authorization": "Basic eA==", "Authorization": "Bearer t"}
    direct = httpx.post(f"http://127.0.0.1:{upstream.port}/base/predict?x=1", content=body, headers=sent)
    reply = httpx.post(f"{proxy.url}/predict?x=1", content=body, headers=sent)

    assert reply.status_code == direct.status_code == 200
    assert reply.content == direct.content == PREDICTION
    assert end_to_end(reply.headers) == end_to_end(direct.headers)
    assert reply.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert reply.headers["x-prediction-id"] == "req-1" and reply.headers["x-model-version"] == "7"
    assert "x-hop" not in reply.headers and "keep-alive" not in reply.headers
    assert "proxy-authenticate" not in reply.headers

    seen = upstream.seen[-1]
    assert (seen.method, seen.path_qs, seen.body) == ("POST", "/base/predict?x=1", body)
    assert seen.header("traceparent") == [TRACEPARENT]
    assert seen.header("host") == [f"127.0.0.1:{upstream.port}"]
    assert seen.header("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header("x-forwarded-proto") == ["http"]
    assert seen.header("x-forwarded-host") == [proxy.url.removeprefix("http://")]
    assert seen.header("authorization") == ["Bearer t"] and seen.header("x-prediction-id") == ["req-1"]
    assert not seen.header("x-drop") and not seen.header("proxy-authorization")

    events = proxy.events("req-1")
    request, response = events["InferenceRequest"], events["InferenceResponse"]
    assert request["body_sha256"] == hashlib.sha256(body).hexdigest() and request["body_size"] == len(body)
    assert request["body"] == body[:16] and request["body_truncated"]
    assert request["features"] == {"age": 41.0, "city": "Oslo"} and request["parse_error"] is None
    assert (request["method"], request["path"], request["endpoint"]) == ("POST", "/predict", "/predict")
    assert (request["client_id"], request["traceparent"]) == ("client-9", TRACEPARENT)
    assert request["content_type"] == "application/json"
    assert response["body_sha256"] == hashlib.sha256(PREDICTION).hexdigest()
    assert response["outputs"] == {"score": 0.75, "label": "cat", "ok": True}
    assert (response["status"], response["model_version"], response["error"]) == (200, "7", None)
    assert response["latency_us"] > 0
    assert proxy.all_events("req-1") == ["InferenceRequest", "InferenceResponse"]


def test_upstream_gets_no_headers_the_client_did_not_send(proxy: Running, upstream: Upstream) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"POST /raw HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, reply_body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and reply_body == PREDICTION
    prediction_id = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n")
                         if line.lower().startswith(b"x-prediction-id:")).decode()
    assert uuid.UUID(prediction_id).version == 7

    seen = upstream.seen[-1]
    assert seen.body == b"abc"
    sent_names = {k.lower() for k, _ in seen.headers}
    assert sent_names == {"host", "content-length", "x-forwarded-for", "x-forwarded-proto",
                          "x-forwarded-host", "traceparent", "x-prediction-id"}
    assert is_valid_traceparent(seen.header("traceparent")[0])
    events = proxy.events(prediction_id)
    assert events["InferenceRequest"]["traceparent"] == seen.header("traceparent")[0]
    assert events["InferenceRequest"]["features"] == {} and events["InferenceRequest"]["parse_error"]


def test_compressed_and_chunked_bodies_pass_through_byte_for_byte(proxy: Running) -> None:
    with httpx.Client() as client:
        with client.stream("GET", f"{proxy.url}/gzip", headers={"Accept-Encoding": "gzip"}) as reply:
            raw = b"".join(reply.iter_raw())
        assert reply.headers["content-encoding"] == "gzip"
        assert gzip.decompress(raw) == PREDICTION
        response = proxy.events(reply.headers["x-prediction-id"])["InferenceResponse"]
        assert response["body_sha256"] == hashlib.sha256(raw).hexdigest()

        chunked = client.get(f"{proxy.url}/chunked")
        assert chunked.content == b"one,two,three"
        response = proxy.events(chunked.headers["x-prediction-id"])["InferenceResponse"]
        assert response["body_sha256"] == hashlib.sha256(b"one,two,three").hexdigest()


def test_upstream_status_and_redirects_are_passed_on(proxy: Running) -> None:
    reply = httpx.get(f"{proxy.url}/predict?status=503")
    assert reply.status_code == 503 and reply.content == PREDICTION
    assert proxy.events(reply.headers["x-prediction-id"])["InferenceResponse"]["status"] == 503
    assert httpx.get(f"{proxy.url}/predict?status=302").status_code == 302
    head = httpx.head(f"{proxy.url}/predict")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(PREDICTION))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=4096), method=st.sampled_from(["POST", "PUT", "PATCH"]))
def test_any_body_reaches_the_upstream_exactly_and_is_hashed(
    proxy: Running, upstream: Upstream, body: bytes, method: str
) -> None:
    prediction_id = f"h-{uuid.uuid4().hex}"
    reply = httpx.request(method, f"{proxy.url}/p", content=body, headers={"X-Request-ID": prediction_id})
    assert reply.status_code == 200
    assert next(s for s in reversed(upstream.seen) if s.header("x-prediction-id") == [prediction_id]).body == body
    request = proxy.events(prediction_id)["InferenceRequest"]
    assert request["body_sha256"] == hashlib.sha256(body).hexdigest() and request["body_size"] == len(body)


def test_a_chunked_request_body_is_streamed_to_the_upstream_exactly(proxy: Running, upstream: Upstream) -> None:
    parts = [bytes([i]) * 70_000 for i in range(5)]  # several receive() messages: the streamed path
    prediction_id = f"chunked-{uuid.uuid4().hex}"
    reply = httpx.post(f"{proxy.url}/stream", content=iter(parts), headers={"X-Request-ID": prediction_id})
    assert reply.status_code == 200 and reply.content == PREDICTION
    seen = next(s for s in reversed(upstream.seen) if s.header("x-prediction-id") == [prediction_id])
    assert seen.body == b"".join(parts)
    assert seen.header("transfer-encoding") == ["chunked"] and not seen.header("content-length")
    request = proxy.events(prediction_id)["InferenceRequest"]
    assert request["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert request["body_size"] == len(b"".join(parts))


def test_unreachable_upstream_is_a_recorded_502(loop: LoopThread, upstream: Upstream) -> None:
    with socket.socket() as closed:  # bound but not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with sidecar(loop, url, upstream, model_version="3") as running:
            reply = httpx.post(f"{running.url}/predict", content=b"{}", headers={"X-Request-ID": "down-1"})
            assert reply.status_code == 502
            assert reply.json() == {"error": "upstream unavailable", "prediction_id": "down-1"}
            assert reply.headers["x-prediction-id"] == "down-1" and reply.headers["x-model-version"] == "3"
            events = running.events("down-1")
    response = events["InferenceResponse"]
    assert response["status"] == 502 and url in response["error"]
    assert response["body_sha256"] == hashlib.sha256(reply.content).hexdigest()
    assert events["InferenceRequest"]["body_sha256"] == hashlib.sha256(b"{}").hexdigest()


def test_slow_upstream_is_a_recorded_504(loop: LoopThread, upstream: Upstream) -> None:
    url = f"http://127.0.0.1:{upstream.port}"
    with sidecar(loop, url, upstream, upstream_read_timeout_s=0.3) as running:
        reply = httpx.post(f"{running.url}/slow", content=b"{}", headers={"X-Request-ID": "slow-1"}, timeout=10)
        assert reply.status_code == 504
        assert reply.json() == {"error": "upstream timed out", "prediction_id": "slow-1"}
        events = running.events("slow-1")
    assert events["InferenceResponse"]["status"] == 504 and "timed out" in events["InferenceResponse"]["error"]
    assert "InferenceRequest" in events


def test_a_failing_emitter_never_fails_the_request(loop: LoopThread, upstream: Upstream) -> None:
    from prometheus_client import REGISTRY

    class Broken:
        backlog = 0

        def emit_exchange(self, request: dict, response: dict, **times: object) -> None:
            raise RuntimeError("encoder exploded")

    before = REGISTRY.get_sample_value("provline_sidecar_event_errors_total") or 0.0
    with sidecar(loop, f"http://127.0.0.1:{upstream.port}", upstream, emitter=Broken()) as running:  # type: ignore[arg-type]
        reply = httpx.post(f"{running.url}/predict", content=b"{}")
        assert reply.status_code == 200 and reply.content == PREDICTION
        errors = wait_for(lambda: REGISTRY.get_sample_value("provline_sidecar_event_errors_total") or 0.0,
                          lambda value: value > before, 5)
    assert errors == before + 1


def test_events_reach_kafka_keyed_by_prediction_id(
    loop: LoopThread, upstream: Upstream, kafka_bootstrap: str, topics: Topics
) -> None:
    emitter = build_emitter(JobSettings(kafka={"bootstrap": kafka_bootstrap}, topics={"prefix": topics.prefix}),
                            producer_name="sidecar-kafka-test")
    ids = [f"k-{i}" for i in range(3)]
    with sidecar(loop, f"http://127.0.0.1:{upstream.port}", upstream, emitter=emitter) as running:
        for prediction_id in ids:
            assert httpx.post(f"{running.url}/predict", content=b'{"x": 1}',
                              headers={"X-Request-ID": prediction_id}).status_code == 200
    assert emitter.close(10.0)

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.inference])
    received: list[tuple[str, str, dict]] = []
    deadline = time.monotonic() + 30
    try:
        while len(received) < 6 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                for event in events_in(default_catalog(), message.value()):
                    decoded = default_catalog().decode(event)
                    received.append((message.key().decode(), decoded.record, decoded.value))
    finally:
        consumer.close()
    assert sorted((key, kind) for key, kind, _ in received) == sorted(
        (i, kind) for i in ids for kind in ("InferenceRequest", "InferenceResponse"))
    assert all(key == value["prediction_id"] for key, _, value in received)
    assert all(value["producer"]["name"] == "sidecar-kafka-test" for _, _, value in received)


def test_the_reply_is_sent_before_events_are_built(loop: LoopThread, upstream: Upstream) -> None:
    release, called = threading.Event(), threading.Event()

    class Stuck:
        """Holds the sidecar's event loop inside ``emit`` until the test has its reply."""

        backlog = 0

        def emit_exchange(self, request: dict, response: dict, **times: object) -> None:
            called.set()
            release.wait(10)

    with sidecar(loop, f"http://127.0.0.1:{upstream.port}", upstream, emitter=Stuck()) as running:  # type: ignore[arg-type]
        try:
            reply = httpx.post(f"{running.url}/predict", content=b"{}", timeout=5)
            assert reply.content == PREDICTION
        finally:
            release.set()
    assert called.is_set()


def test_queued_exchanges_are_recorded_at_shutdown_and_a_full_queue_becomes_a_gap(
    loop: LoopThread, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import REGISTRY

    from provline.sidecar import recorder

    monkeypatch.setattr(recorder, "RECORD_INTERVAL_S", 60.0)  # nothing is recorded until shutdown
    monkeypatch.setattr(recorder, "MAX_UNRECORDED", 3)
    before = REGISTRY.get_sample_value("provline_events_dropped_total", {"reason": "recorder_behind"}) or 0.0
    ids = [f"queued-{i}" for i in range(5)]
    with sidecar(loop, f"http://127.0.0.1:{upstream.port}", upstream) as running:
        for prediction_id in ids:
            reply = httpx.post(f"{running.url}/predict", content=b"{}", headers={"X-Request-ID": prediction_id})
            assert reply.status_code == 200 and reply.content == PREDICTION
        assert running.emitter.transport.messages == [], "exchanges are recorded in batches, not per request"  # type: ignore[union-attr]
    decoded = [default_catalog().decode(raw) for raw in sent(running.emitter)]
    recorded = sorted((d.value["prediction_id"], d.record) for d in decoded if d.record.startswith("Inference"))
    assert recorded == sorted((i, kind) for i in ids[:3] for kind in ("InferenceRequest", "InferenceResponse"))
    gaps = [d.value for d in decoded if d.record == "DeliveryGap"]
    assert [(gap["reason"], gap["dropped"]) for gap in gaps] == [("recorder_behind", 4)]
    after = REGISTRY.get_sample_value("provline_events_dropped_total", {"reason": "recorder_behind"})
    assert after == before + 4
