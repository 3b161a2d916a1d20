"""``POST /v1/feedback`` against hostile callers: only feedback_writer tokens may post, and may do nothing
else; wrong types, huge batches, forged fields, injection strings and unknown ids are refused with the
right status, every call is in the access log, and nothing refused is published or stored."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from provline.producers import MemoryTransport
from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.integrity import HashChain, load_private_key, signature_valid
from provline.sink import feedback
from provline.sink.api import create_api
from provline.sink.settings import ServeSettings
from provline.sink.writer import insert_plan, plan_batch
from tests.helpers import StoredMessage, memory_emitter, seal, sent

TOKENS = {"crm": ("w" * 32, "feedback_writer"), "vic": ("v" * 32, "viewer"), "ann": ("a" * 32, "auditor"),
          "root": ("r" * 32, "admin")}
SIGNING_KEY = base64.b64encode(bytes(range(32))).decode()


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][0]}"}


def store_prediction(client: Client, prediction_id: str, request_id: str) -> None:
    """A prediction's request and trace, stored the way the sink stores them."""
    chain, catalog = HashChain(default_catalog()), default_catalog()
    request = {**new_envelope(producer_identity("sidecar", "s")), "prediction_id": prediction_id,
               "endpoint": "/predict", "method": "POST", "path": "/predict", "body_size": 2, "body_sha256": "0" * 64,
               "request_id": request_id}
    trace = {**new_envelope(producer_identity("stream_processors", "t")), "prediction_id": prediction_id,
             "endpoint": "/predict", "complete": True, "model_name": "churn", "model_version": "1",
             "request_id": request_id}
    messages = [StoredMessage("inference", 0, 0, catalog.encode("InferenceRequest", seal(chain, "InferenceRequest",
                                                                                           request))),
                StoredMessage("traces", 0, 0, catalog.encode("PredictionTrace", seal(HashChain(catalog),
                                                                                     "PredictionTrace", trace)))]
    assert insert_plan(client, plan_batch(messages, catalog), catalog) == []


@pytest.fixture
def api(store: Client, chdb_path: str) -> Iterator[tuple[TestClient, MemoryTransport, Any]]:
    store_prediction(store, "p1", "order-1")
    emitter, transport = memory_emitter("provline-serve", signing={"key": SIGNING_KEY})
    settings = ServeSettings(store={"url": chdb_path}, feedback={"max_batch": 10},
                             api={"tokens": {name: {"token": t, "role": r} for name, (t, r) in TOKENS.items()}})
    with TestClient(create_api(settings, store, emitter=emitter)) as http:
        yield http, transport, emitter
    emitter.close()


def feedback_sent(emitter: Any) -> list[dict[str, Any]]:
    return [v for v in (default_catalog().decode(raw).value for raw in sent(emitter)) if "observed_time" in v]


def test_only_feedback_writers_post_and_they_may_do_nothing_else(
    api: tuple[TestClient, MemoryTransport, Any], store: Client,
) -> None:
    http, _, emitter = api
    label = {"prediction_id": "p1", "label": "churned"}
    calls: list[tuple[str, str, dict[str, str], Any, int]] = [
        ("POST", "/v1/feedback", {}, label, 401),
        ("POST", "/v1/feedback", {"Authorization": "Bearer " + "x" * 32}, label, 401),
        ("POST", "/v1/feedback", bearer("vic"), label, 403),
        ("POST", "/v1/feedback", bearer("ann"), label, 403),
        ("POST", "/v1/feedback", bearer("root"), label, 403),
        ("GET", "/v1/traces/p1", bearer("crm"), None, 403),
        ("GET", "/v1/predictions?request_id=order-1", bearer("crm"), None, 403),
        ("POST", "/v1/sql", bearer("crm"), {"sql": "SELECT 1"}, 403),
        ("GET", "/v1/verify", bearer("crm"), None, 403),
        ("GET", "/v1/access-log", bearer("crm"), None, 403),
        ("GET", "/v1/evidence/p1", bearer("crm"), None, 403),
    ]
    for method, path, headers, body, status in calls:
        reply = http.request(method, path, headers=headers, json=body)
        assert reply.status_code == status, (method, path, headers, reply.text)
    assert "feedback_writer" in http.get("/v1/traces/p1", headers=bearer("crm")).json()["detail"]
    assert feedback_sent(emitter) == []
    accepted = http.post("/v1/feedback", headers=bearer("crm"), json=label)
    assert accepted.status_code == 202 and accepted.json()["results"][0]["prediction_ids"] == ["p1"]
    [event] = feedback_sent(emitter)
    assert (event["prediction_id"], event["label"], event["source"]) == ("p1", "churned", "api")
    public = load_private_key(SIGNING_KEY).public_key()
    assert event["producer"]["name"] == "provline-serve" and signature_valid(public, event)
    logged = store.query("SELECT reader, role, path, status, allowed FROM access_log WHERE path = '/v1/feedback' "
                         "ORDER BY time").result_rows
    assert [(r[0], r[3], r[4]) for r in logged] == [("", 401, False), ("", 401, False), ("vic", 403, False),
                                                    ("ann", 403, False), ("root", 403, False), ("crm", 202, True)]


HOSTILE_ITEMS: list[tuple[Any, str]] = [
    ({"prediction_id": 1, "label": "x"}, "prediction_id must be a string"),
    ({"prediction_id": None, "client_request_id": None, "label": "x"}, "exactly one"),
    ({"prediction_id": "p1", "client_request_id": "order-1", "label": "x"}, "exactly one"),
    ({"prediction_id": "p1"}, "label or an outcome"),
    ({"prediction_id": "p1", "label": {"$gt": ""}}, "label must be a string"),
    ({"prediction_id": "p1", "outcome": "NaN"}, "outcome must be a number"),
    ({"prediction_id": "p1", "label": "x", "event_id": "0192-forged"}, "unknown fields"),
    ({"prediction_id": "p1", "label": "x" * 20_000}, "at most"),
    ({"prediction_id": "p1\x00", "label": "x"}, "control characters"),
    ({"prediction_id": "p1", "label": "x", "observed_time": "1; DROP TABLE feedback"}, "ISO-8601"),
    ("p1", "JSON object"),
    ([["p1", "x"]], "JSON object"),
]
UNKNOWN_IDS = [{"prediction_id": "p1' OR '1'='1", "label": "x"},
               {"client_request_id": "order-1'); DROP TABLE feedback; --", "label": "x"},
               {"prediction_id": "p2", "label": "x"}, {"client_request_id": "order-2", "outcome": 1.0}]


def test_hostile_payloads_are_refused_and_nothing_is_published_or_stored(
    api: tuple[TestClient, MemoryTransport, Any], store: Client,
) -> None:
    http, _, emitter = api
    headers = bearer("crm")
    for item, reason in HOSTILE_ITEMS:
        single = http.post("/v1/feedback", headers=headers, json=item)
        if isinstance(item, list):  # a list is a batch: its one item is invalid
            assert single.status_code == 200 and single.json()["invalid"] == 1, single.text
        else:
            assert single.status_code == 422 and single.json()["results"][0]["status"] == "invalid", single.text
        assert reason in str(single.json()), (item, single.text)
    for item in UNKNOWN_IDS:
        reply = http.post("/v1/feedback", headers=headers, json=item)
        assert reply.status_code == 404 and reply.json()["results"][0]["status"] == "not_found", reply.text
    batch = http.post("/v1/feedback", headers=headers, json=[item for item, _ in HOSTILE_ITEMS[:6]] + UNKNOWN_IDS)
    assert batch.status_code == 200 and (batch.json()["invalid"], batch.json()["not_found"]) == (6, 4), batch.text
    huge = http.post("/v1/feedback", headers=headers, json=[{"prediction_id": "p1", "label": "x"}] * 11)
    assert huge.status_code == 413 and "exceeds the 10 allowed" in huge.json()["detail"]
    body = b'{"prediction_id": "p1", "label": "' + b"x" * (10 * 16 * 1024) + b'"}'
    oversized = http.post("/v1/feedback", headers={**headers, "Content-Type": "application/json"}, content=body)
    assert oversized.status_code == 413 and "bytes; send smaller batches" in oversized.json()["detail"]
    assert http.post("/v1/feedback", headers=headers, json=[]).status_code == 422
    assert http.post("/v1/feedback", headers={**headers, "Content-Type": "application/json"},
                     content=b'{"prediction_id": "p1", "label": ').status_code == 422
    assert http.post("/v1/feedback", headers=headers, content=b"\xff\xfe").status_code == 422
    assert feedback_sent(emitter) == []
    assert store.query("SELECT count() FROM feedback").result_rows == [(0,)]
    assert store.query("SELECT count() FROM prediction_traces").result_rows == [(1,)]  # nothing dropped either
    statuses = store.query("SELECT status, count() FROM access_log WHERE path = '/v1/feedback' GROUP BY status "
                           "ORDER BY status").result_rows
    assert statuses == [(200, 2), (404, 4), (413, 2), (422, 14)]


def test_feedback_is_answered_accepted_only_once_it_is_in_the_spool(
    api: tuple[TestClient, MemoryTransport, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the emitter's spool writer stopped, a label is held in memory only: the API must not call
    it accepted (a restart of serve would lose it), but answer 503 so that the sender tries again."""
    http, _, emitter = api
    monkeypatch.setattr(feedback, "DURABLE_TIMEOUT_S", 0.5)
    first = http.post("/v1/feedback", headers=bearer("crm"), json={"prediction_id": "p1", "label": "a"})
    assert first.status_code == 202
    emitter.processor.close(0.1)  # the worker that moves queued messages into the spool stops
    refused = http.post("/v1/feedback", headers=bearer("crm"), json={"prediction_id": "p1", "label": "b"})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert "durable" in refused.json()["detail"]
