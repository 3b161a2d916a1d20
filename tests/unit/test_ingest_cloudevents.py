"""The pure part of ``provline ingest``: CloudEvents from KServe's and Seldon's loggers into halves of an exchange."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime

import orjson
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from provline.producers.processor import BatchProcessor
from provline.producers.settings import EmitterSettings
from provline.producers.transports import MemoryTransport
from provline.sidecar.cloudevents import CloudEventError, LoggedHalf, parse_event
from provline.sidecar.ingest import endpoint_of, event_time, sampled_in

V2_REQUEST = b'{"id": "order-1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.5, 2.5]}]}'
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def kserve_event(kind: str = "request", *, event_id: str = "req-1", data: bytes = V2_REQUEST,
                 **extra: str) -> CloudEvent:
    """What KServe's agent sends (pkg/logger/worker.go): id, type, source, the four extensions and metadata."""
    attributes = {
        "id": event_id, "type": f"org.kubeflow.serving.inference.{kind}", "source": "http://localhost:9081/",
        "specversion": "1.0", "inferenceservicename": "iris", "namespace": "models", "component": "predictor",
        "endpoint": "default", "metadata": json.dumps({"X-Client-Id": ["shop"], "Traceparent": [TRACEPARENT]}),
        "datacontenttype": "application/json", **extra,
    }
    return CloudEvent(attributes, data)


def headers_of(raw: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in raw.items()]


def parse(headers: dict[str, str], body: bytes | str) -> LoggedHalf:
    return parse_event(headers_of(headers), body.encode() if isinstance(body, str) else body)


def test_binary_kserve_event_is_parsed_with_its_exact_bytes() -> None:
    headers, body = to_binary(kserve_event())
    half = parse(headers, body)
    assert (half.sender, half.half, half.event_id) == ("kserve", "request", "req-1")
    assert half.data == V2_REQUEST == body
    assert (half.service, half.namespace, half.component, half.endpoint) == ("iris", "models", "predictor", "default")
    assert half.model_name == "iris"
    assert half.header("x-client-id") == "shop"
    assert half.traceparent == TRACEPARENT  # forwarded as a metadata header
    assert half.content_type == "application/json"


def test_structured_event_with_json_data_hashes_its_compact_serialisation() -> None:
    event = kserve_event(data=orjson.loads(V2_REQUEST))  # type: ignore[arg-type]
    headers, body = to_structured(event)
    half = parse(headers, body)
    assert half.data == orjson.dumps(orjson.loads(V2_REQUEST))
    assert half.content_type == "application/json"


def test_structured_event_with_data_base64_gives_the_exact_bytes() -> None:
    document = {"specversion": "1.0", "id": "b-1", "type": "org.kubeflow.serving.inference.response",
                "source": "s", "data_base64": base64.b64encode(b"\x00binary\xff").decode()}
    half = parse({"content-type": "application/cloudevents+json"}, json.dumps(document))
    assert (half.half, half.data) == ("response", b"\x00binary\xff")


def test_both_halves_and_retries_share_one_prediction_id_and_others_do_not() -> None:
    ids = {parse(*to_binary(kserve_event(kind))).prediction_id for kind in ("request", "response", "request")}
    assert len(ids) == 1
    (the_id,) = ids
    assert len(the_id) == 36 and the_id.count("-") == 4
    assert parse(*to_binary(kserve_event(event_id="req-2"))).prediction_id != the_id
    assert parse(*to_binary(kserve_event(namespace="other"))).prediction_id != the_id


def test_seldon_executor_headers() -> None:
    headers = {"Ce-Id": "puid-9", "Ce-Specversion": "1.0", "Ce-Source": "http://seldon-model.seldon:8000/",
               "Ce-Type": "io.seldon.serving.inference.response", "Ce-Modelid": "classifier",
               "Ce-Inferenceservicename": "seldon-model", "Ce-Namespace": "seldon", "Ce-Endpoint": "example",
               "Ce-Requestid": "puid-9", "Content-Type": "application/json", "traceparent": TRACEPARENT}
    half = parse(headers, '{"data": {"ndarray": [[0.9]]}}')
    assert (half.sender, half.half, half.model_name, half.request_id) == ("seldon", "response", "classifier", "puid-9")
    assert half.traceparent == TRACEPARENT


def test_seldon_halves_pair_by_their_request_id() -> None:
    def half(kind: str, event_id: str) -> LoggedHalf:
        return parse({"Ce-Id": event_id, "Ce-Type": f"io.seldon.serving.inference.{kind}", "Ce-Source": "s",
                      "Ce-Modelid": "classifier", "Ce-Requestid": "puid-1"}, "{}")

    assert half("request", "a").prediction_id == half("response", "b").prediction_id


@pytest.mark.parametrize(("headers", "body", "reason"), [
    ({"content-type": "application/json"}, "{}", "not_a_cloudevent"),
    ({"ce-type": "org.kubeflow.serving.inference.request", "ce-source": "s"}, "{}", "missing_attribute"),
    ({"ce-id": "1", "ce-source": "s"}, "{}", "missing_attribute"),
    ({"ce-id": "1", "ce-type": "com.example.other"}, "{}", "unknown_type"),
    ({"content-type": "application/cloudevents+json"}, "{not json", "invalid_json"),
    ({"content-type": "application/cloudevents+json"}, "[1]", "invalid_json"),
    ({"content-type": "application/cloudevents+json; charset=utf-8"},
     '{"id": "1", "type": "org.kubeflow.serving.inference.request", "data_base64": "***"}', "invalid_base64"),
    ({"ce-id": "x" * 5000, "ce-type": "org.kubeflow.serving.inference.request"}, "{}", "attribute_too_long"),
])
def test_refusals_say_what_was_wrong(headers: dict[str, str], body: str, reason: str) -> None:
    with pytest.raises(CloudEventError) as caught:
        parse(headers, body)
    assert caught.value.reason == reason
    assert caught.value.status == 400
    assert len(str(caught.value)) > 40


def test_invalid_traceparent_is_not_recorded() -> None:
    headers, body = to_binary(kserve_event(metadata="{}"))
    half = parse({**headers, "traceparent": "00-zz-bad"}, body)
    assert half.traceparent is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=12), st.binary(max_size=500))
def test_hostile_headers_and_bodies_are_parsed_or_refused(raw: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [(name, value) for name, value in raw]
    for extra in ([], [(b"content-type", b"application/cloudevents+json")],
                  [(b"ce-id", b"1"), (b"ce-type", b"org.kubeflow.serving.inference.request")]):
        try:
            half = parse_event(extra + headers, body)
        except CloudEventError as exc:
            assert exc.reason
        else:
            assert half.event_id and half.prediction_id


def test_endpoint_template_sampling_and_event_time() -> None:
    half = parse(*to_binary(kserve_event(time="2026-12-02T10:00:00.123456789Z")))
    assert endpoint_of("{namespace}/{service}/{component}", half) == "models/iris/predictor"
    assert event_time(half, datetime(2000, 1, 1, tzinfo=UTC)) == datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=UTC)
    received = datetime(2000, 1, 1, tzinfo=UTC)
    assert event_time(parse(*to_binary(kserve_event(time="not a time"))), received) == received
    ids = [parse(*to_binary(kserve_event(event_id=str(i)))).prediction_id for i in range(400)]
    kept = sum(sampled_in(i, 0.25) for i in ids)
    assert 50 < kept < 150
    assert all(sampled_in(i, 1.0) for i in ids) and not any(sampled_in(i, 0.0) for i in ids)


def test_when_spooled_calls_back_once_the_message_is_in_the_spool(tmp_path: object) -> None:
    processor = BatchProcessor(MemoryTransport, EmitterSettings(spool_fsync="always", linger_s=5.0))
    try:
        done = threading.Event()
        ticket = processor.submit_ticket("t", b"k", b"v")
        assert ticket == 1
        processor.when_spooled(ticket, done.set)  # wakes the worker at once, not after linger_s
        assert done.wait(10)
        assert processor.submit_ticket("t", b"k", b"w") == 2
        late = threading.Event()
        processor.when_spooled(1, late.set)  # spooled already: called at once, in this thread
        assert late.is_set()
    finally:
        processor.close(5)
