"""The feedback resolver on the real store (chDB): stored Feedback naming only a client request id is
resolved once a trace carries that id, once, within its retention; and a label the join could not
attach (a frame's trace, or a marker expired) is still shown on the trace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from provline.sink import queries
from provline.sink.feedback import FeedbackResolver, resolve_request_ids, resolved_event_id
from provline.sink.writer import insert_plan, plan_batch
from tests.helpers import StoredMessage, memory_emitter, seal, sent

pytestmark = pytest.mark.integration

CATALOG = default_catalog()
RETENTION_S = 7 * 86_400.0


class Store:
    """Events stored the way the sink stores them, each at a new offset."""

    def __init__(self, client: Client) -> None:
        self.client, self.chain, self.offset = client, HashChain(CATALOG), 0

    def put(self, kind: str, fields: dict[str, Any], *, event_time: datetime | None = None) -> dict[str, Any]:
        value = {**new_envelope(producer_identity("test", "s"), event_time=event_time), **fields}
        seal(self.chain, kind, value)
        self.offset += 1
        message = StoredMessage("t", 0, self.offset, CATALOG.encode(kind, value))
        assert insert_plan(self.client, plan_batch([message], CATALOG), CATALOG) == []
        return value

    def trace(self, prediction_id: str, request_id: str) -> None:
        self.put("PredictionTrace", {"prediction_id": prediction_id, "endpoint": "/predict", "complete": True,
                                     "model_name": "churn", "model_version": "1", "request_id": request_id})

    def feedback(self, **fields: Any) -> dict[str, Any]:
        return self.put("Feedback", {"prediction_id": None, "client_request_id": None, "label": None,
                                     "outcome": None, "source": "crm", "observed_time": datetime.now(UTC), **fields})


def published(emitter: Any) -> list[dict[str, Any]]:
    return [v for v in (CATALOG.decode(raw).value for raw in sent(emitter)) if "observed_time" in v]


def test_feedback_by_client_request_id_is_resolved_once_when_its_trace_is_stored(store: Client) -> None:
    stored = Store(store)
    original = stored.feedback(client_request_id="order-1", label="churned")
    old = stored.feedback(client_request_id="order-9", label="x", event_time=datetime.now(UTC) - timedelta(days=8))
    emitter, _ = memory_emitter("provline-serve")
    resolver = FeedbackResolver(store, emitter, retention_s=RETENTION_S, interval_s=1)
    assert resolver.resolve_once() == 0  # no trace carries order-1 yet: looked at again next time

    stored.trace("p-1", "order-1")
    stored.trace("p-2", "order-1")  # a request id two predictions share: both are labelled
    stored.trace("p-9", "order-9")  # the label older than the retention is no longer resolved
    assert resolve_request_ids(store, ["order-1", "order-unknown"]) == {"order-1": ["p-2", "p-1"]}
    assert resolver.resolve_once() == 2
    assert resolver.resolve_once() == 0  # published, not stored yet: not published again
    resolved = published(emitter)
    assert sorted((v["prediction_id"], v["client_request_id"], v["label"]) for v in resolved) == [
        ("p-1", "order-1", "churned"), ("p-2", "order-1", "churned")]
    assert {v["event_id"] for v in resolved} == {
        resolved_event_id(original["event_id"], pid, original["event_time"]) for pid in ("p-1", "p-2")}
    assert old["event_id"] and all(v["client_request_id"] != "order-9" for v in resolved)

    # the sink stores what was published; a resolver starting afresh (serve restarted) publishes nothing
    for value in resolved:
        stored.offset += 1
        message = StoredMessage("t", 0, stored.offset, CATALOG.encode("Feedback", value))
        assert insert_plan(store, plan_batch([message], CATALOG), CATALOG) == []
    again, _ = memory_emitter("provline-serve")
    assert FeedbackResolver(store, again, retention_s=RETENTION_S, interval_s=1).resolve_once() == 0
    rows = store.query("SELECT prediction_id, client_request_id FROM feedback FINAL ORDER BY prediction_id, "
                       "client_request_id").result_rows
    assert rows == [("", "order-1"), ("", "order-9"), ("p-1", "order-1"), ("p-2", "order-1")]


def test_a_label_the_join_never_attached_is_shown_on_the_trace(store: Client) -> None:
    stored = Store(store)
    stored.trace("p-1", "order-1")  # a trace out without its label (a frame's, or a marker expired)
    label = stored.feedback(prediction_id="p-1", client_request_id="order-1", label="churned", outcome=2.0)
    found = queries.trace(store, "p-1", queries.RegistryCache())
    assert found is not None
    assert (found["label"], found["outcome"], found["feedback_source"], found["feedback_event_id"]) == (
        "churned", 2.0, "crm", label["event_id"])
