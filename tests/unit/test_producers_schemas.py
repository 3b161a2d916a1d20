"""ModelVersion, Deployment and Evaluation v2: v1 plus fields with defaults, so v1 writers still decode."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from provline.schemas import default_catalog
from provline.schemas.events import new_envelope, producer_identity
from provline.schemas.serde import AVSC_DIR, SINGLE_OBJECT_MAGIC, load_writer_schema

V1_VALUES = {
    "ModelVersion": {"model_name": "churn", "version": "1", "artifact_uri": "file:///m", "artifact_sha256": "ab",
                     "framework": None, "run_id": "r", "feature_sets": [], "datasets": ["sha256:d"],
                     "io_signature": None},
    "Deployment": {"model_name": "churn", "model_version": "1", "environment": "prod", "endpoint": "/predict",
                   "action": "DEPLOY", "reason": None, "previous_version": None},
    "Evaluation": {"model_name": "churn", "model_version": "1", "dataset": None, "slice": None, "metrics": [],
                   "passed": True, "tests": [], "run_id": None},
}
ADDED = {
    "ModelVersion": {"served_versions": [], "input_names": [], "output_names": [], "artifact_files": [],
                     "flavors": [], "mlflow_run_id": None, "mlflow_model_uuid": None, "mlflow_created_time": None,
                     "predictions_dataset": None},
    "Deployment": {"served_versions": []},
    "Evaluation": {"predictions_dataset": None},
}


def fields(record: str, revision: int) -> list[dict]:
    return json.loads((AVSC_DIR / f"{record}.v{revision}.avsc").read_text())["fields"]


@pytest.mark.parametrize("record", sorted(ADDED))
def test_v2_is_v1_plus_fields_with_defaults(record: str) -> None:
    v1, v2 = fields(record, 1), fields(record, 2)
    assert v2[: len(v1)] == v1
    assert {f["name"]: f["default"] for f in v2[len(v1):]} == ADDED[record]
    assert default_catalog().current(record).revision == 2


@pytest.mark.parametrize("record", sorted(ADDED))
def test_an_event_of_a_v1_writer_decodes_with_the_defaults(record: str) -> None:
    import io

    import fastavro

    v1 = load_writer_schema((AVSC_DIR / f"{record}.v1.avsc").read_text())
    value = {**new_envelope(producer_identity("old-job", "s"), event_time=datetime(2025, 1, 1, tzinfo=UTC)),
             **V1_VALUES[record]}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1.parsed, value)
    decoded = default_catalog().decode(SINGLE_OBJECT_MAGIC + v1.fingerprint + body.getvalue())
    assert decoded.writer.revision == 1
    assert decoded.value == {**value, **ADDED[record]}
