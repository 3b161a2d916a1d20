"""The sidecar's v2 events as the sink stores them (issue 14): ClickHouse reads every row of a batch."""

from __future__ import annotations

import json

import pytest
from clickhouse_connect.driver.client import Client

from provline.sidecar.events import Capture, describe_body, request_fields
from provline.sidecar.payload import ObservedBody
from provline.sidecar.policy import FieldRules, Redactor
from tests.integration.test_sink_ingest import event, stored_row

pytestmark = pytest.mark.integration


def test_feature_rows_row_count_and_request_id_reach_the_stored_payload(store: Client) -> None:
    body = ObservedBody.whole(json.dumps({"id": "client-7", "parameters": {"content_type": "pd"}, "inputs": [
        {"name": "age", "shape": [3], "datatype": "INT64", "data": [41, 17, 5]},
        {"name": "city", "shape": [3], "datatype": "BYTES", "data": ["Oslo", "Rome", None]},
        {"name": "member", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
    ]}).encode())
    record = describe_body(body, "application/json", mode="full", rules=FieldRules(), redactor=Redactor(None),
                           capture=Capture(1 << 16, 1 << 20, max_rows=2), role="input")
    fields = request_fields(prediction_id="p-rows", endpoint="/v2/models/m/infer", method="POST",
                            path="/v2/models/m/versions/2/infer", observed=body, record=record,
                            content_type="application/json", client_id=None, traceparent=None, model_name="m",
                            model_version="2", request_id=record.request_id, content_encoding="gzip")
    payload = json.loads(stored_row(store, "InferenceRequest", event("InferenceRequest", **fields))["payload"])
    assert payload["feature_rows"] == [{"age": 41.0, "city": "Oslo", "member": True},
                                       {"age": 17.0, "city": "Rome", "member": False}]
    assert payload["features"] == payload["feature_rows"][0]
    assert (payload["row_count"], payload["rows_truncated"]) == (3, True)
    assert (payload["request_id"], payload["content_encoding"]) == ("client-7", "gzip")
