"""Finding 5: every row of a batched request is recorded, KServe V2 tensors and MLflow's four formats
alike (drift counting those rows: test_drift.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.real_servers.audit import Row, model_inputs, predict, v2_output, v2_request, wait_for_trace
from tests.real_servers.conftest import RealServers

pytestmark = pytest.mark.real_servers
BATCH = 50

MLFLOW_FORMATS: dict[str, Callable[[list[str], list[Row]], dict[str, Any]]] = {
    "dataframe_split": lambda columns, rows: {"dataframe_split": {"columns": columns, "data": rows}},
    "dataframe_records": lambda columns, rows: {"dataframe_records": [dict(zip(columns, r, strict=True))
                                                                      for r in rows]},
    "instances": lambda columns, rows: {"instances": [dict(zip(columns, r, strict=True)) for r in rows]},
    "inputs": lambda columns, rows: {"inputs": {c: [r[i] for r in rows] for i, c in enumerate(columns)}},
}


def test_a_v2_batch_of_50_rows_gives_50_feature_and_output_rows(servers: RealServers) -> None:
    _, rows = model_inputs(servers.training, "iris")
    rows = rows[:BATCH]
    sent = predict(servers.mlserver_sidecar, "/v2/models/iris/infer", v2_request(rows))
    trace = wait_for_trace(servers.stack, sent.prediction_id)
    assert trace.get("row_count") == BATCH, trace
    assert len(trace["feature_rows"]) == BATCH and len(trace["output_rows"]) == BATCH
    assert [sorted(row.values()) for row in trace["feature_rows"]] == [sorted(row) for row in rows]
    assert [list(row.values()) for row in trace["output_rows"]] == v2_output(sent.json())
    assert trace["features"] == trace["feature_rows"][0]


@pytest.mark.parametrize("payload", sorted(MLFLOW_FORMATS))
def test_each_mlflow_format_gives_every_row(servers: RealServers, payload: str) -> None:
    columns, rows = model_inputs(servers.training, "iris")
    rows = rows[:BATCH]
    sent = predict(servers.mlflow_sidecar, "/invocations", MLFLOW_FORMATS[payload](columns, rows))
    predictions = sent.json()["predictions"]
    assert len(predictions) == BATCH
    trace = wait_for_trace(servers.stack, sent.prediction_id)
    assert trace.get("row_count") == BATCH, trace
    assert trace["feature_rows"] == [dict(zip(columns, row, strict=True)) for row in rows]
    assert [list(row.values()) for row in trace["output_rows"]] == [[p] for p in predictions]
