from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest

from schemas import default_catalog, new_envelope, producer_identity
from schemas.integrity import HashChain
from sink.lineage import EDGE_COLUMNS
from sink.rows import INDEX_COLUMNS, LOOKUP_COLUMNS, TABLES, Origin, payload_json, table_for, to_row
from sink.store import migration_files, split_statements
from sink.writer import first_offsets, next_offsets, plan_batch

WHEN = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
ORIGIN = Origin(topic="p.lineage.v1", partition=2, offset=41, raw=b"\xc3\x01raw")


def event(kind: str, **fields: Any) -> dict[str, Any]:
    value = {**new_envelope(producer_identity("test", "s1"), event_time=WHEN), **fields}
    return HashChain(default_catalog()).seal(kind, value)


def as_dict(kind: str, value: dict[str, Any]) -> dict[str, Any]:
    return dict(zip(table_for(kind).columns, to_row(kind, value, ORIGIN), strict=True))


def run_event() -> dict[str, Any]:
    return event(
        "RunEvent", run_id="run-1", name="train", state="COMPLETED", stage="training",
        code={"repo": "git@x:y.git", "commit": "abc123", "branch": "main", "dirty": False, "diff_sha256": None,
              "entrypoint": "train.py", "argv": []},
    )


def test_run_event_row_has_envelope_nested_code_and_kafka_origin() -> None:
    value = run_event()
    row = as_dict("RunEvent", value)
    assert row["event_id"] == value["event_id"]
    assert row["event_time"] == WHEN
    assert row["producer_session"] == "s1"
    assert row["hash"] == value["hash"] and row["prev_hash"] is None
    assert (row["run_id"], row["state"], row["code_repo"], row["code_commit"]) == (
        "run-1", "COMPLETED", "git@x:y.git", "abc123"
    )
    assert row["parent_run_id"] is None
    assert (row["raw"], row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (
        ORIGIN.raw, "p.lineage.v1", 2, 41
    )
    assert json.loads(row["payload"])["code"]["commit"] == "abc123"


def test_run_event_without_code_has_null_code_columns() -> None:
    value = run_event()
    value["code"] = None
    row = as_dict("RunEvent", value)
    assert row["code_repo"] is None and row["code_commit"] is None


def test_model_version_maps_version_to_model_version_and_keeps_datasets() -> None:
    value = event(
        "ModelVersion", model_name="churn", version="3", artifact_uri="s3://m/3", artifact_sha256="f" * 64,
        run_id="run-1", datasets=["d1", "d2"],
    )
    row = as_dict("ModelVersion", value)
    assert (row["model_name"], row["model_version"], row["artifact_sha256"], row["run_id"]) == (
        "churn", "3", "f" * 64, "run-1"
    )
    assert row["datasets"] == ["d1", "d2"]


def test_prediction_trace_and_delivery_gap_rows() -> None:
    trace = event(
        "PredictionTrace", prediction_id="p-1", endpoint="/predict", complete=True, model_name="churn",
        model_version="3", request_sha256="a" * 64, training_run_id=None, dataset_digests=["d1"],
    )
    row = as_dict("PredictionTrace", trace)
    assert (row["prediction_id"], row["complete"], row["training_run_id"], row["dataset_digests"]) == (
        "p-1", True, None, ["d1"]
    )
    gap = event("DeliveryGap", dropped=7, reason="queue full", first_time=WHEN, last_time=WHEN)
    row = as_dict("DeliveryGap", gap)
    assert (row["dropped"], row["reason"], row["first_time"]) == (7, "queue full", WHEN)


def test_payload_is_json_with_iso_datetimes_and_base64_bytes() -> None:
    value = event(
        "InferenceRequest", prediction_id="p-1", endpoint="/predict", method="POST", path="/predict",
        body_size=3, body_sha256="b" * 64, body=b"\x00\xffx", body_truncated=False,
        features={"age": 41.0, "plan": "gold", "missing": None},
    )
    payload = json.loads(payload_json(value))
    assert payload["event_time"] == "2025-03-01T12:30:15.123456+00:00"
    assert base64.b64decode(payload["body"]) == b"\x00\xffx"
    assert payload["features"] == {"age": 41.0, "plan": "gold", "missing": None}


def test_payload_json_is_sorted_strict_json_whatever_the_values() -> None:
    text = payload_json({"b": MappingProxyType({"z": 1, "a": b"\x01"}), "a": float("nan"), "big": 2**70,
                         "when": WHEN, "name": "Ø"})
    assert text == ('{"a":NaN,"b":{"a":"AQ==","z":1},"big":1180591620717411303424,'
                    '"name":"\\u00d8","when":"2025-03-01T12:30:15.123456+00:00"}')  # beyond 64 bits: stdlib
    text = payload_json({"b": MappingProxyType({"z": 1, "a": b"\x01"}), "a": float("inf"), "when": WHEN,
                         "name": "Ø"})
    assert text == '{"a":null,"b":{"a":"AQ==","z":1},"name":"Ø","when":"2025-03-01T12:30:15.123456+00:00"}'
    assert json.loads(text)["name"] == "Ø"


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no sink table for event kind 'Nope'.*RunEvent"):
        table_for("Nope")


def test_every_kind_in_the_contract_has_a_table() -> None:
    assert set(TABLES) == set(default_catalog().records)


def ddl_columns() -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for _, text in migration_files():
        for statement in split_statements(text):
            match = re.search(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*?)\n\)", statement, re.S)
            if match is None:
                assert re.search(r"^ALTER TABLE \w+ MODIFY SETTING", statement, re.M), statement
                continue
            columns = [
                line.split()[0] for line in match.group(2).splitlines()
                if line.strip() not in ("", "(") and not line.strip().startswith("PROJECTION")
            ]
            tables[match.group(1)] = columns
    return tables


def test_ddl_columns_match_row_order() -> None:
    tables = ddl_columns()
    for spec in TABLES.values():
        assert tables[spec.table] == list(spec.columns), spec.table
    assert tables["lineage_edges"] == list(EDGE_COLUMNS)
    assert tables["prediction_index"] == list(INDEX_COLUMNS)
    assert set(LOOKUP_COLUMNS) == {spec.table for spec in TABLES.values()}


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes = b"k") -> None:
        self._topic, self._partition, self._offset, self._value, self._key = topic, partition, offset, value, key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value


def test_plan_batch_groups_rows_per_table_and_dead_letters_garbage() -> None:
    catalog = default_catalog()
    messages = [
        FakeMessage("t", 0, 5, catalog.encode("RunEvent", run_event())),
        FakeMessage("t", 0, 6, b"garbage"),
        FakeMessage("t", 1, 9, catalog.encode("RunEvent", run_event())),
        FakeMessage("t", 1, 10, None),
    ]
    plan = plan_batch(messages, catalog)
    assert list(plan.rows) == ["run_events"] and len(plan.rows["run_events"]) == 2
    assert [(d.origin.offset, d.reason) for d in plan.dead_letters] == [(6, "CorruptEventError"), (10, "SchemaError")]
    headers = dict(plan.dead_letters[0].headers())
    assert headers["provline-source-offset"] == b"6" and headers["provline-source-topic"] == b"t"
    assert next_offsets(messages) == {("t", 0): 7, ("t", 1): 11}
    assert first_offsets(messages) == {("t", 0): 5, ("t", 1): 9}
