"""Issue 17 item 5: the sidecar exports one OTLP span per recorded exchange to a real OTLP/HTTP receiver
run by the test (decoding ExportTraceServiceRequest with opentelemetry-proto), and keeps serving when
the receiver is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import REGISTRY

from deploy.local.kafka.broker import free_port
from provline.schemas import Topics, default_catalog
from provline.sidecar import SidecarApp, SidecarSettings
from tests.helpers import LoopThread, serve_app
from tests.integration.test_sidecar_proxy import start_server, stop_server
from tests.integration.test_sidecar_redaction import read_topic

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 30.0
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
UNSAMPLED_TRACE = "0af7651916cd43dd8448eb211c80319c"


@dataclass
class Receiver:
    """An OTLP/HTTP traces receiver: every span it was sent, with its resource's attributes."""

    spans: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    upstream_traceparents: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        with self.lock:
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def model(self, request: web.Request) -> web.Response:
        await request.read()
        self.upstream_traceparents.append(request.headers.get("traceparent", ""))
        return web.json_response({"score": 0.5})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str, str]]:
    """The receiver, its traces URL, and a model server (on the same aiohttp app)."""
    loop, double = LoopThread(), Receiver()

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/v1/traces", double.traces)
        app.router.add_route("*", "/predict", double.model)
        return await serve_app(app)

    runner, port = loop.run(start())
    yield double, f"http://127.0.0.1:{port}/v1/traces", f"http://127.0.0.1:{port}"
    loop.run(runner.cleanup())
    loop.close()


def settings(upstream: str, otel_endpoint: str, bootstrap: str, topics: Topics, **otel: Any) -> SidecarSettings:
    return SidecarSettings(
        sidecar={"upstream": upstream, "kserve_metadata": False, "model_name": "churn", "model_version": "3"},
        emitter={"close_timeout_s": 60}, kafka={"bootstrap": bootstrap}, topics={"prefix": topics.prefix},
        otel={"endpoint": otel_endpoint, "service_name": "checkout", "schedule_delay_s": 0.05, **otel},
    )


@contextmanager
def running(sidecar: SidecarSettings) -> Iterator[httpx.Client]:
    """A client of a sidecar running with these settings; stopping it flushes the emitter and the export."""
    loop = LoopThread()
    server, task, url = loop.run(start_server(SidecarApp(sidecar)))
    try:
        with httpx.Client(base_url=url) as client:
            yield client
    finally:
        loop.run(stop_server(server, task), timeout=60)
        loop.close()


def predict(client: httpx.Client, traceparent: str | None) -> httpx.Response:
    return client.post("/predict", json={"age": 41}, headers={"traceparent": traceparent} if traceparent else {})


def serve(sidecar: SidecarSettings, traceparents: list[str | None]) -> list[httpx.Response]:
    with running(sidecar) as client:
        return [predict(client, tp) for tp in traceparents]


def failures() -> float:
    return REGISTRY.get_sample_value("provline_otel_export_failures_total") or 0.0


def test_one_span_per_recorded_exchange_as_a_child_of_the_callers_span(
    receiver: tuple[Receiver, str, str], kafka_bootstrap: str, topics: Topics,
) -> None:
    double, traces_url, upstream = receiver
    replies = serve(settings(upstream, traces_url, kafka_bootstrap, topics), [
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", f"00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00", None])
    assert [reply.status_code for reply in replies] == [200, 200, 200]
    traced, unsampled, untraced = (reply.headers["x-prediction-id"] for reply in replies)

    events = [default_catalog().decode(raw) for raw in read_topic(kafka_bootstrap, topics.inference, 6)]
    stored = {e.value["prediction_id"]: e.value for e in events if e.record.endswith("InferenceRequest")}
    assert set(stored) == {traced, unsampled, untraced}

    with double.lock:
        spans = {span.attributes[0].value.string_value: (resource, span) for resource, span in double.spans
                 if span.attributes and span.attributes[0].key == "provline.prediction_id"}
        assert len(double.spans) == 2 == len(spans)  # the caller did not sample the second exchange
    resource, span = spans[traced]
    attributes = {a.key: a.value for a in span.attributes}
    assert resource["service.name"] == "checkout"
    assert span.trace_id.hex() == CALLER_TRACE and span.parent_span_id.hex() == CALLER_SPAN
    assert attributes["provline.prediction_id"].string_value == stored[traced]["prediction_id"]
    assert attributes["provline.input_sha256"].string_value == stored[traced]["body_sha256"]
    assert attributes["provline.model_name"].string_value == "churn"
    assert attributes["provline.model_version"].string_value == "3"
    assert attributes["provline.endpoint"].string_value == stored[traced]["endpoint"]
    assert attributes["http.response.status_code"].int_value == 200
    assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano

    # no caller trace: the span begins the trace the sidecar sent upstream, so the model's spans are its children
    _, root = spans[untraced]
    began = double.upstream_traceparents[2].split("-")
    assert root.parent_span_id == b"" and (root.trace_id.hex(), root.span_id.hex()) == (began[1], began[2])
    assert unsampled not in spans


def test_the_sidecar_keeps_serving_when_the_receiver_is_down(
    receiver: tuple[Receiver, str, str], kafka_bootstrap: str, topics: Topics,
) -> None:
    _, _, upstream = receiver
    down = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens there
    before = failures()
    with running(settings(upstream, down, kafka_bootstrap, topics, timeout_s=1, sampling="always")) as client:
        replies = [predict(client, tp) for tp in (f"00-{CALLER_TRACE}-{CALLER_SPAN}-00", None, None)]
        deadline = time.monotonic() + DEADLINE_SECONDS
        while failures() < before + 3:  # each export gives up after timeout_s
            assert time.monotonic() < deadline, f"{failures() - before} of 3 failed spans counted"
            time.sleep(0.1)  # polling interval
        replies.append(predict(client, None))  # still serving after the failures
    assert [reply.status_code for reply in replies] == [200, 200, 200, 200]
    assert failures() <= before + 4  # a span is counted once
    assert len(read_topic(kafka_bootstrap, topics.inference, 8)) == 8  # every exchange recorded


def test_the_export_without_the_otel_extra_fails_at_start_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, topics: Topics,
) -> None:
    import sys

    from provline.sidecar.errors import StartupError

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    app = SidecarApp(SidecarSettings(sidecar={"upstream": "http://127.0.0.1:9"},
                                     emitter={"spool_dir": tmp_path}, topics={"prefix": topics.prefix},
                                     otel={"endpoint": "http://127.0.0.1:4318/v1/traces"}))
    loop = LoopThread()
    try:
        with pytest.raises(StartupError, match=r"pip install 'provline\[otel\]'"):
            loop.run(app.startup())
    finally:
        loop.run(app.shutdown())
        loop.close()
