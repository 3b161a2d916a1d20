"""InferenceRequest / InferenceResponse v2: v1 plus rows, request id and content encoding; v3: v2 plus the
MLflow model uuid; all with defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest

from provline.schemas import Catalog, default_catalog
from provline.schemas.events import new_envelope, producer_identity
from provline.schemas.serde import AVSC_DIR

ADDED = {
    "InferenceRequest": ["feature_rows", "row_count", "rows_truncated", "request_id", "content_encoding"],
    "InferenceResponse": ["output_rows", "row_count", "rows_truncated", "request_id", "content_encoding"],
}
V1_FIELDS = {
    "InferenceRequest": {"prediction_id": "p-1", "endpoint": "/predict", "method": "POST", "path": "/predict",
                         "body_size": 2, "body_sha256": "ab" * 32, "features": {"age": 41.0}},
    "InferenceResponse": {"prediction_id": "p-1", "endpoint": "/predict", "status": 200, "body_size": 2,
                          "body_sha256": "ab" * 32, "outputs": {"score": 0.5}, "latency_us": 9},
}


def fields(record: str, revision: int) -> list[dict[str, Any]]:
    return json.loads((AVSC_DIR / f"{record}.v{revision}.avsc").read_text())["fields"]


@pytest.mark.parametrize("record", sorted(ADDED))
def test_v2_is_v1_plus_fields_with_defaults(record: str) -> None:
    v1, v2 = fields(record, 1), fields(record, 2)
    assert v2[: len(v1)] == v1
    assert [f["name"] for f in v2[len(v1):]] == ADDED[record]
    assert all("default" in f for f in v2[len(v1):])


@pytest.mark.parametrize("record", sorted(ADDED))
def test_v3_is_v2_plus_the_mlflow_model_uuid(record: str) -> None:
    v2, v3 = fields(record, 2), fields(record, 3)
    assert v3[: len(v2)] == v2
    assert [(f["name"], f["type"], f["default"]) for f in v3[len(v2):]] == [
        ("mlflow_model_uuid", ["null", "string"], None)]
    assert default_catalog().current(record).revision == 3


@pytest.mark.parametrize("record", sorted(ADDED))
def test_an_event_of_a_v1_writer_decodes_with_the_v2_defaults(record: str, tmp_path: Any) -> None:
    (tmp_path / f"{record}.v1.avsc").write_text((AVSC_DIR / f"{record}.v1.avsc").read_text())
    old_writer = Catalog(tmp_path)
    value = {**new_envelope(producer_identity("sidecar", "s-1")), **V1_FIELDS[record]}
    decoded = default_catalog().decode(old_writer.encode(record, value))
    assert decoded.writer.revision == 1
    rows = "feature_rows" if record == "InferenceRequest" else "output_rows"
    assert {name: decoded.value[name] for name in ADDED[record]} == {
        rows: [], "row_count": 1, "rows_truncated": False, "request_id": None, "content_encoding": None}
    assert decoded.value["mlflow_model_uuid"] is None
