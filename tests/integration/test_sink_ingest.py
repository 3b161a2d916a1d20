"""The rows ClickHouse makes from the sink's Avro containers (sink/ingest.py), on the real engine (chDB)."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from clickhouse_connect.driver.client import Client

from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.frames import FRAMES, exchange_frame
from provline.schemas.integrity import HashChain
from provline.schemas.serde import AVSC_DIR, SINGLE_OBJECT_MAGIC, load_writer_schema
from provline.sink.rows import table_for
from provline.sink.store import ensure_views
from provline.sink.writer import insert_plan, plan_batch
from tests.helpers import StoredMessage, seal

pytestmark = pytest.mark.integration

WHEN = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
V2_ONLY = {"label", "outcome", "feedback_source", "feedback_time", "feedback_event_id"}  # PredictionTrace
TOPIC = "p.lineage.v1"


def event(kind: str, **fields: Any) -> dict[str, Any]:
    value = {**new_envelope(producer_identity("test", "s1"), event_time=WHEN), **fields}
    return seal(HashChain(default_catalog()), kind, value)


def stored_row(
    client: Client, kind: str, value: dict[str, Any], offset: int = 41, raw: bytes | None = None
) -> dict[str, Any]:
    """Store one event through the writer's path and read its row back; ``raw``: the message as sent."""
    catalog = default_catalog()
    raw = raw if raw is not None else catalog.encode(kind, value)
    plan = plan_batch([StoredMessage(TOPIC, 2, offset, raw)], catalog)
    assert plan.dead_letters == [] and insert_plan(client, plan, catalog) == []
    table = table_for(kind).table
    result = client.query(
        f"SELECT * FROM {table} WHERE event_id = {{id:String}}", parameters={"id": value["event_id"]},
        column_formats={"raw": "bytes"},
    )
    assert len(result.result_rows) == 1
    row = dict(zip(result.column_names, result.result_rows[0], strict=True))
    assert row["raw"] == raw
    return row


def run_event(**overrides: Any) -> dict[str, Any]:
    fields = {
        "run_id": "run-1", "name": "train", "state": "COMPLETED", "stage": "training",
        "code": {"repo": "git@x:y.git", "commit": "abc123", "branch": "main", "dirty": False, "diff_sha256": None,
                 "entrypoint": "train.py", "argv": []},
    }
    return event("RunEvent", **{**fields, **overrides})


def test_run_event_row_has_envelope_nested_code_and_kafka_origin(store: Client) -> None:
    value = run_event()
    row = stored_row(store, "RunEvent", value)
    assert row["event_time"].replace(tzinfo=UTC) == WHEN
    assert (row["producer_name"], row["producer_session"], row["hash"], row["prev_hash"]) == (
        "test", "s1", value["hash"], None
    )
    assert (row["run_id"], row["state"], row["code_repo"], row["code_commit"], row["parent_run_id"]) == (
        "run-1", "COMPLETED", "git@x:y.git", "abc123", None
    )
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == ("p.lineage.v1", 2, 41)
    payload = json.loads(row["payload"])
    assert payload["code"]["commit"] == "abc123" and payload["state"] == "COMPLETED"
    assert payload["event_time"] == "2025-03-01T12:30:15.123456Z"
    assert datetime.fromisoformat(payload["event_time"]) == WHEN

    without_code = stored_row(store, "RunEvent", run_event(code=None), offset=42)
    assert without_code["code_repo"] is None and json.loads(without_code["payload"])["code"] is None


def test_model_version_maps_version_and_keeps_datasets(store: Client) -> None:
    value = event(
        "ModelVersion", model_name="churn", version="3", artifact_uri="s3://m/3", artifact_sha256="f" * 64,
        run_id="run-1", datasets=["d1", "d2"],
    )
    row = stored_row(store, "ModelVersion", value)
    assert (row["model_name"], row["model_version"], row["run_id"], row["datasets"]) == (
        "churn", "3", "run-1", ["d1", "d2"]
    )


def test_payload_is_json_with_base64_bytes_plain_numbers_and_null_for_nan(store: Client) -> None:
    request = event(
        "InferenceRequest", prediction_id="p-1", endpoint="/v1/models/churn:predict", method="POST",
        path="/predict", body_size=2**40, body_sha256="b" * 64, body=b"\x00\xffx", body_truncated=False,
        features={"age": 41.0, "plan": "gold", "missing": None, "member": True},
    )
    payload = json.loads(stored_row(store, "InferenceRequest", request)["payload"])
    assert base64.b64decode(payload["body"]) == b"\x00\xffx" and payload["signature"] is None
    assert payload["body_size"] == 2**40 and payload["endpoint"] == "/v1/models/churn:predict"
    assert payload["features"] == {"age": 41.0, "plan": "gold", "missing": None, "member": True}

    metric = event(
        "DriftMetric", model_name="churn", model_version="3", feature="age", metric="psi", window_start=WHEN,
        window_end=WHEN, value=float("nan"), threshold=0.1, breached=False, sample_size=3,
    )
    row = stored_row(store, "DriftMetric", metric)
    assert json.loads(row["payload"])["value"] is None  # NaN is not JSON; the raw column keeps it


def test_traces_derive_the_index_and_served_edges_and_repeats_are_stored_once(store: Client) -> None:
    catalog = default_catalog()
    trace = event("PredictionTrace", prediction_id="p-9", endpoint="/p", complete=True, model_name="churn",
                  model_version="3")
    anonymous = event("PredictionTrace", prediction_id="p-10", endpoint="/p", complete=False)
    raw = catalog.encode("PredictionTrace", trace)
    messages = [StoredMessage(TOPIC, 2, 0, raw), StoredMessage(TOPIC, 2, 1, raw),
                StoredMessage(TOPIC, 2, 2, catalog.encode("PredictionTrace", anonymous))]
    assert insert_plan(store, plan_batch(messages, catalog), catalog) == []
    assert store.query("SELECT prediction_id FROM prediction_traces ORDER BY prediction_id").result_rows == [
        ("p-10",), ("p-9",),
    ]
    index = store.query("SELECT model_name, model_version, prediction_id FROM prediction_index ORDER BY prediction_id")
    assert index.result_rows == [("", "", "p-10"), ("churn", "3", "p-9")]
    edges = store.query("SELECT from_node, to_node, edge FROM lineage_edges").result_rows
    assert edges == [("model:churn@3", "prediction:p-9", "served")]


def test_an_unsealed_event_is_dead_lettered_and_the_rest_of_its_insert_is_stored(store: Client) -> None:
    catalog = default_catalog()
    good = event("Feedback", prediction_id="p-1", label="churned", source="crm", observed_time=WHEN)
    unsealed = {**new_envelope(producer_identity("x", "s")), "prediction_id": "p-2", "label": "x", "source": "crm",
                "observed_time": WHEN}
    truncated = catalog.encode("Feedback", good)[:-3]
    messages = [StoredMessage(TOPIC, 2, 0, catalog.encode("Feedback", good)),
                StoredMessage(TOPIC, 2, 1, catalog.encode("Feedback", unsealed)), StoredMessage(TOPIC, 2, 2, truncated)]
    letters = insert_plan(store, plan_batch(messages, catalog), catalog)
    assert [(letter.origin.offset, letter.reason) for letter in letters] == [
        (1, "InvalidEventError"), (2, "CorruptEventError"),
    ]
    assert store.query("SELECT prediction_id FROM feedback").result_rows == [("p-1",)]


def test_views_are_created_once_and_replaced_when_their_definition_changes(store: Client) -> None:
    assert ensure_views(store, default_catalog()) == []  # migrate made them all
    views = store.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'MaterializedView'"
    ).result_rows
    # per event kind one into its table and one into the ledger; the index and the served edges
    assert len(views) == 2 * len(set(default_catalog().records) - FRAMES) + 2
    stale = views[0][0]
    store.command(f"RENAME TABLE {stale} TO provline_view_old_definition")
    assert ensure_views(store, default_catalog()) == [stale]
    names = {row[0] for row in store.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
             .result_rows}
    assert stale in names and "provline_view_old_definition" not in names


def test_an_event_in_an_older_writer_schema_is_stored_in_the_current_one_with_its_bytes_as_sent(
    store: Client,
) -> None:
    v1 = load_writer_schema((AVSC_DIR / "PredictionTrace.v1.avsc").read_text())
    trace = event("PredictionTrace", prediction_id="p-old", endpoint="/p", complete=True, model_name="churn",
                  model_version="2")
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1.parsed, {k: v for k, v in trace.items() if k not in V2_ONLY})
    raw = SINGLE_OBJECT_MAGIC + v1.fingerprint + body.getvalue()
    row = stored_row(store, "PredictionTrace", trace, raw=raw)
    assert (row["prediction_id"], row["model_version"]) == ("p-old", "2")
    payload = json.loads(row["payload"])
    assert payload["label"] is None and payload["feedback_event_id"] is None  # v2 fields, at their defaults


def test_an_exchange_frame_stores_both_events_as_sent_alone_and_a_bad_half_costs_only_itself(store: Client) -> None:
    catalog = default_catalog()
    chain = HashChain(catalog)

    def exchange(pid: str) -> tuple[bytes, bytes]:
        request = seal(chain, "InferenceRequest", {
            **new_envelope(producer_identity("sidecar", "s1"), event_time=WHEN), "prediction_id": pid,
            "endpoint": "/predict", "method": "POST", "path": "/predict", "body_size": 2, "body_sha256": "a" * 64})
        response = seal(chain, "InferenceResponse", {
            **new_envelope(producer_identity("sidecar", "s1"), event_time=WHEN), "prediction_id": pid,
            "endpoint": "/predict", "status": 200, "body_size": 2, "body_sha256": "b" * 64, "latency_us": 10})
        return catalog.encode("InferenceRequest", request), catalog.encode("InferenceResponse", response)

    first, second = exchange("p-1"), exchange("p-2")
    unsealed = catalog.encode("InferenceResponse", {**catalog.decode(second[1]).value, "hash": ""})
    messages = [StoredMessage("p.inference.v1", 1, 7, exchange_frame(catalog, "p-1", *first)),
                StoredMessage("p.inference.v1", 1, 8, exchange_frame(catalog, "p-2", second[0], unsealed)),
                StoredMessage("p.inference.v1", 1, 9, exchange_frame(catalog, "p-3", *first)[:-5])]
    plan = plan_batch(messages, catalog)
    letters = plan.dead_letters + insert_plan(store, plan, catalog)
    assert [(letter.origin.offset, letter.reason, letter.origin.raw) for letter in letters] == [
        (9, "CorruptEventError", messages[2].value()), (8, "InvalidEventError", unsealed)]
    requests = store.query("SELECT raw, kafka_topic, kafka_partition, kafka_offset FROM inference_requests "
                           "ORDER BY kafka_offset", column_formats={"raw": "bytes"}).result_rows
    assert requests == [(first[0], "p.inference.v1", 1, 7), (second[0], "p.inference.v1", 1, 8)]
    responses = store.query("SELECT raw, kafka_offset FROM inference_responses",
                            column_formats={"raw": "bytes"}).result_rows
    assert responses == [(first[1], 7)]
