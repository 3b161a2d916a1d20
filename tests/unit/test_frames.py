"""Exchange frames: one message holding a prediction's request and response (issue 15, one message per prediction)."""

from __future__ import annotations

import pytest

from provline.producers.emitter import Emitter
from provline.schemas import CorruptEventError, InvalidEventError, default_catalog
from provline.schemas.frames import EXCHANGE, events_in, exchange_frame
from tests.helpers import chain_findings, decoded, memory_emitter, sent
from tests.unit.test_producers_emitter import FlakyProcessor, deployment

CATALOG = default_catalog()


def halves(emitter: Emitter, pid: str = "p1") -> tuple[dict, dict]:
    return ({"prediction_id": pid, "endpoint": "/predict", "method": "POST", "path": "/predict", "body_size": 2,
             "body_sha256": "a" * 64},
            {"prediction_id": pid, "endpoint": "/predict", "status": 200, "body_size": 2, "body_sha256": "b" * 64,
             "latency_us": 10})


def test_an_exchange_is_one_message_whose_events_are_those_sent_alone() -> None:
    emitter, transport = memory_emitter("sidecar")
    request, response = halves(emitter)
    emitter.emit_exchange(request, response, request_time=None, response_time=None)
    emitter.flush(5)
    [message] = transport.messages
    assert message.key == b"p1" and CATALOG.decode(message.value).record == EXCHANGE
    assert [kind for kind, _ in decoded(emitter)] == ["InferenceRequest", "InferenceResponse"]
    assert chain_findings(sent(emitter)) == []  # each half is sealed in the session's chain, request first


def test_a_dropped_exchange_drops_both_halves_and_leaves_the_chain_whole() -> None:
    emitter = Emitter(FlakyProcessor(drop_at={2}), producer_name="flaky")
    emitter.emit("Deployment", deployment("1"))
    request, response = halves(emitter)
    emitter.emit_exchange(request, response, request_time=None, response_time=None)  # dropped: queue full
    emitter.emit("Deployment", deployment("2"))
    events = decoded(emitter)
    assert [kind for kind, _ in events] == ["Deployment", "Deployment", "DeliveryGap"]
    assert events[2][1]["dropped"] == 2
    assert chain_findings(sent(emitter)) == []


def test_an_exchange_whose_response_does_not_fit_seals_neither_half() -> None:
    emitter, _ = memory_emitter("sidecar")
    request, response = halves(emitter)
    with pytest.raises(InvalidEventError):
        emitter.emit_exchange(request, {**response, "status": "not a number"}, request_time=None, response_time=None)
    emitter.emit_exchange(request, response, request_time=None, response_time=None)
    assert chain_findings(sent(emitter)) == []  # no link to a request nobody received


def test_a_frame_must_hold_a_request_then_a_response() -> None:
    emitter, transport = memory_emitter("sidecar")
    request, response = halves(emitter)
    emitter.emit_exchange(request, response, request_time=None, response_time=None)
    emitter.flush(5)
    req, resp = events_in(CATALOG, transport.messages[0].value)
    assert events_in(CATALOG, req) == [req]  # an event alone is its own message
    with pytest.raises(InvalidEventError, match="must be an InferenceResponse event, not InferenceRequest"):
        events_in(CATALOG, exchange_frame(CATALOG, "p1", req, req))
    with pytest.raises(CorruptEventError):
        events_in(CATALOG, exchange_frame(CATALOG, "p1", req, resp)[:-4])
    assert events_in(CATALOG, b"not an event") == [b"not an event"]  # whoever decodes it says why


def test_a_frame_is_read_as_fastavro_reads_it() -> None:
    emitter, transport = memory_emitter("sidecar")
    request, response = halves(emitter, "p-" + "é" * 200)  # lengths of two bytes and more
    emitter.emit_exchange(request, response, request_time=None, response_time=None)
    emitter.flush(5)
    message = transport.messages[0].value
    frame = CATALOG.decode(message).value
    assert events_in(CATALOG, message) == [frame["request"], frame["response"]]
    with pytest.raises(CorruptEventError, match="after its body"):
        events_in(CATALOG, message + b"\x00")
