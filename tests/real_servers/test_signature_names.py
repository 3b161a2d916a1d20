"""Finding 6: the usual single V2 tensor is named after the training columns (from the model's
signature), and one 1-D tensor per column is one row per value, not one row."""

from __future__ import annotations

import pytest

from tests.real_servers.audit import model_inputs, predict, v2_request, wait_for_trace
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers


def test_a_single_v2_tensor_is_named_after_the_training_columns(servers: RealServers) -> None:
    columns, rows = model_inputs(servers.training, "iris")
    rows = rows[:3]
    sent = predict(servers.mlserver_sidecar, "/v2/models/iris/infer", v2_request(rows))
    # the names come from the signature the ModelVersion recorded: wait for the trace that has it
    trace = wait_for_trace(servers.stack, sent.prediction_id, until=lambda t: t.get("complete") is True)
    assert trace.get("features") == dict(zip(columns, rows[0], strict=True)), trace
    assert trace["feature_rows"] == [dict(zip(columns, row, strict=True)) for row in rows]


def test_one_1d_tensor_per_column_is_one_row_per_value(servers: RealServers) -> None:
    columns, rows = model_inputs(servers.training, "iris")
    rows = rows[:5]
    body = {"parameters": {"content_type": "pd"},  # MLServer's pandas codec: one tensor per column
            "inputs": [{"name": column, "shape": [len(rows)], "datatype": "FP64", "data": [row[i] for row in rows]}
                       for i, column in enumerate(columns)]}
    sent = predict(servers.mlserver_sidecar, "/v2/models/iris/infer", body)
    trace = wait_for_trace(servers.stack, sent.prediction_id)
    assert trace.get("row_count") == len(rows), trace
    assert trace["feature_rows"] == [dict(zip(columns, row, strict=True)) for row in rows]
    assert len(trace["output_rows"]) == len(rows)
