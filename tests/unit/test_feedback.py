"""Ground truth's pure parts: the checks every path shares, Feedback v2, the resolver's ids, feedback files."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastavro
import pytest

from provline.feedback_file import FeedbackFileError, RowProblem, file_items
from provline.producers.feedback import MAX_ID_CHARS, InvalidFeedbackError, feedback_fields, feedback_item
from provline.schemas import default_catalog, key_for
from provline.schemas.events import new_envelope, producer_identity
from provline.schemas.serde import AVSC_DIR, SINGLE_OBJECT_MAGIC, load_writer_schema
from provline.sink.api import FEEDBACK_WRITER, Reader
from provline.sink.feedback import resolved_event_id, resolved_fields
from provline.stream_processors.join import Timing, deadline, mark_done
from tests.helpers import decoded, memory_lineage
from tests.unit.test_processors_joiner import both

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


# ---------------------------------------------------------------- the shared check


def test_exactly_one_id_and_a_label_or_an_outcome() -> None:
    assert feedback_fields(prediction_id="p1", label="churned", now=NOW) == {
        "prediction_id": "p1", "client_request_id": None, "label": "churned", "outcome": None, "source": "api",
        "observed_time": NOW,
    }
    assert feedback_fields(client_request_id="order-42", outcome=3, source="crm", now=NOW)["outcome"] == 3.0
    with pytest.raises(InvalidFeedbackError, match="exactly one .* got both"):
        feedback_fields(prediction_id="p1", client_request_id="r", label="x")
    with pytest.raises(InvalidFeedbackError, match="exactly one .* got neither"):
        feedback_fields(label="x")
    with pytest.raises(InvalidFeedbackError, match="label or an outcome"):
        feedback_fields(prediction_id="p1")


@pytest.mark.parametrize(("fields", "reason"), [
    ({"prediction_id": 42, "label": "x"}, "prediction_id must be a string"),
    ({"prediction_id": ["p"], "label": "x"}, "prediction_id must be a string"),
    ({"prediction_id": "", "label": "x"}, "empty"),
    ({"prediction_id": " p1", "label": "x"}, "whitespace"),
    ({"prediction_id": "p\x00", "label": "x"}, "control characters"),
    ({"prediction_id": "p" * (MAX_ID_CHARS + 1), "label": "x"}, "at most"),
    ({"prediction_id": "p1", "label": True}, "label must be a string"),
    ({"prediction_id": "p1", "label": {"$ne": 1}}, "label must be a string"),
    ({"prediction_id": "p1", "outcome": "1; DROP TABLE feedback"}, "outcome must be a number"),
    ({"prediction_id": "p1", "outcome": float("nan")}, "finite"),
    ({"prediction_id": "p1", "outcome": float("inf")}, "finite"),
    ({"prediction_id": "p1", "outcome": True}, "outcome must be a number"),
    ({"prediction_id": "p1", "label": "x", "source": ""}, "source"),
    ({"prediction_id": "p1", "label": "x", "source": 3}, "source"),
    ({"prediction_id": "p1", "label": "x", "observed_time": "yesterday"}, "ISO-8601"),
    ({"prediction_id": "p1", "label": "x", "observed_time": 1700000000}, "observed_time must be"),
])
def test_wrong_values_are_refused_with_the_field_named(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidFeedbackError, match=reason):
        feedback_fields(**fields)


def test_times_are_utc_and_injection_strings_are_only_text() -> None:
    naive = feedback_fields(prediction_id="p1", label="x", observed_time=datetime(2026, 1, 1, 8))
    assert naive["observed_time"] == datetime(2026, 1, 1, 8, tzinfo=UTC)
    offset = feedback_fields(prediction_id="p1", label="x", observed_time="2026-01-01T10:00:00+02:00")
    assert offset["observed_time"] == datetime(2026, 1, 1, 8, tzinfo=UTC)
    hostile = "x'); DROP TABLE feedback; --"
    assert feedback_fields(prediction_id=hostile, label=hostile)["label"] == hostile
    assert feedback_fields(prediction_id="p1", label=3)["label"] == "3"  # an integer class


def test_api_items_are_objects_with_known_fields_only() -> None:
    assert feedback_item({"prediction_id": "p1", "label": "x"}, now=NOW)["prediction_id"] == "p1"
    with pytest.raises(InvalidFeedbackError, match="JSON object"):
        feedback_item(["p1", "x"])
    with pytest.raises(InvalidFeedbackError, match="unknown fields \\['event_id'\\]"):
        feedback_item({"prediction_id": "p1", "label": "x", "event_id": "forged"})


# ---------------------------------------------------------------- the producer and the schema


def test_lineage_feedback_sends_v2_keyed_by_the_id_it_names() -> None:
    lineage = memory_lineage()
    lineage.feedback(prediction_id="p1", label="churned", source="crm")
    lineage.feedback(client_request_id="order-42", outcome=12.5)
    with pytest.raises(InvalidFeedbackError):
        lineage.feedback(prediction_id="p1", client_request_id="order-42", label="x")
    events = [(kind, value) for kind, value in decoded(lineage.emitter) if kind == "Feedback"]
    assert [(v["prediction_id"], v["client_request_id"], v["label"], v["outcome"]) for _, v in events] == [
        ("p1", None, "churned", None), (None, "order-42", None, 12.5)]
    keys = [m.key for m in lineage.emitter.transport.messages]  # type: ignore[attr-defined]
    assert keys[:2] == [b"p1", b"order-42"]
    assert [key_for("Feedback", v) for _, v in events] == ["p1", "order-42"]
    lineage.close()


def test_feedback_v2_is_v1_with_an_optional_prediction_id_and_a_client_request_id() -> None:
    v1 = json.loads((AVSC_DIR / "Feedback.v1.avsc").read_text())["fields"]
    v2 = json.loads((AVSC_DIR / "Feedback.v2.avsc").read_text())["fields"]
    assert [f["name"] for f in v2] == [f["name"] for f in v1] + ["client_request_id"]
    by_name = {f["name"]: f for f in v2}
    assert by_name["prediction_id"]["type"] == ["null", "string"] and by_name["client_request_id"]["default"] is None
    assert default_catalog().current("Feedback").revision == 2


def test_a_v1_feedback_decodes_as_v2_without_a_client_request_id() -> None:
    v1 = load_writer_schema((AVSC_DIR / "Feedback.v1.avsc").read_text())
    value = {**new_envelope(producer_identity("old-job", "s"), event_time=NOW),
             "prediction_id": "p1", "label": "churned", "outcome": None, "source": "crm", "observed_time": NOW}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1.parsed, value)
    found = default_catalog().decode(SINGLE_OBJECT_MAGIC + v1.fingerprint + body.getvalue())
    assert found.writer.revision == 1 and found.value == {**value, "client_request_id": None}


# ---------------------------------------------------------------- the resolver's derived events


def test_a_resolved_feedback_has_an_id_derived_from_the_original_and_the_prediction() -> None:
    original = {"event_id": "0192-a", "event_time": NOW, "prediction_id": None, "client_request_id": "order-42",
                "label": "churned", "outcome": None, "source": "crm", "observed_time": NOW - timedelta(days=2)}
    first, again = resolved_fields(original, "p1"), resolved_fields(original, "p1")
    other = resolved_fields(original, "p2")
    assert first == again and first["event_id"] != other["event_id"]
    assert first["event_id"] != resolved_event_id("0192-b", "p1", NOW)
    assert (first["prediction_id"], first["client_request_id"], first["label"], first["observed_time"]) == (
        "p1", "order-42", "churned", NOW - timedelta(days=2))
    assert default_catalog().decode(default_catalog().encode("Feedback", {
        **new_envelope(producer_identity("serve", "s")), **first, "hash": "h"})).value["event_id"] == first["event_id"]


def test_a_writer_token_may_only_write_and_readers_may_not() -> None:
    writer = Reader("crm", FEEDBACK_WRITER)
    assert writer.may(FEEDBACK_WRITER)
    assert not any(writer.may(role) for role in ("viewer", "auditor", "admin"))
    assert not any(Reader("r", role).may(FEEDBACK_WRITER) for role in ("viewer", "auditor", "admin"))
    assert Reader("a", "admin").may("viewer")


def test_done_markers_keep_the_trace_for_the_feedback_retention() -> None:
    marker = mark_done(both(), {"prediction_id": "p1"}, now=100)
    assert deadline(marker, Timing(ttl=30, lineage_wait=10, retention=300)) == 400
    assert deadline(marker, Timing(ttl=30, lineage_wait=10, retention=300, feedback_retention=3 * 86_400)) == \
        100 + 3 * 86_400


# ---------------------------------------------------------------- files


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_csv_rows_become_items_and_bad_rows_problems(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", [
        {"pid": "p1", "y": "churned", "amount": "12.5"},
        {"pid": "p2", "y": "", "amount": "3"},
        {"pid": "", "y": "stayed", "amount": ""},
        {"pid": "p4", "y": "", "amount": "lots"},
        {"pid": "p5", "y": "", "amount": ""},
    ])
    found = list(file_items(path, id_column="pid", id_kind="prediction", label_column="y", outcome_column="amount",
                            source="crm"))
    assert found[0] == (1, {"prediction_id": "p1", "source": "crm", "label": "churned", "outcome": 12.5})
    assert found[1] == (2, {"prediction_id": "p2", "source": "crm", "outcome": 3.0})
    problems = [item for _, item in found if isinstance(item, RowProblem)]
    assert [(p.row, p.status) for p in problems] == [(3, "invalid"), (4, "invalid"), (5, "invalid")]
    assert "not a number" in problems[1].reason and "label or an outcome" in problems[2].reason


def test_parquet_rows_by_client_request_id(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"request": ["order-1", "order-2", None], "cls": [1.0, None, 0.0],
                             "extra": ["a", "b", "c"]}), path)
    found = list(file_items(path, id_column="request", id_kind="client-request", label_column="cls",
                            outcome_column=None, source="batch"))
    assert found[0] == (1, {"client_request_id": "order-1", "source": "batch", "label": "1"})
    assert [(n, type(item).__name__) for n, item in found[1:]] == [(2, "RowProblem"), (3, "RowProblem")]


def test_a_file_without_the_named_columns_or_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", [{"pid": "p1", "y": "x"}])
    with pytest.raises(FeedbackFileError, match="no column 'label'"):
        list(file_items(path, id_column="pid", id_kind="prediction", label_column="label", outcome_column=None,
                        source="s"))
    with pytest.raises(FeedbackFileError, match="--label-column or an --outcome-column"):
        list(file_items(path, id_column="pid", id_kind="prediction", label_column=None, outcome_column=None,
                        source="s"))
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(FeedbackFileError, match=".csv or .parquet"):
        list(file_items(tmp_path / "labels.json", id_column="pid", id_kind="prediction", label_column="y",
                        outcome_column=None, source="s"))


def test_utc_offsets_other_than_zero_are_converted() -> None:
    east = timezone(timedelta(hours=5))
    assert feedback_fields(prediction_id="p", label="x", observed_time=datetime(2026, 1, 1, 5, tzinfo=east))[
        "observed_time"] == datetime(2026, 1, 1, tzinfo=UTC)


def test_the_join_leaves_feedback_by_client_request_id_to_the_sink() -> None:
    from tests.unit.test_processors_join import lineage
    from tests.unit.test_processors_joiner import make_joiner

    joiner, producer = make_joiner(lineage())
    catalog = default_catalog()
    value = {**new_envelope(producer_identity("crm", "s")), **feedback_fields(client_request_id="order-1", label="x")}
    touched: dict[str, Any] = {}
    joiner.take([catalog.decode(catalog.encode("Feedback", value))], touched, partition=0, now=100)
    assert touched == {} and not joiner.table.data and not producer.sent
    by_pid = {**new_envelope(producer_identity("crm", "s")), **feedback_fields(prediction_id="p1", label="x")}
    joiner.take([catalog.decode(catalog.encode("Feedback", by_pid))], touched, partition=0, now=100)
    assert list(touched) == ["p1"]  # by prediction id it waits for its prediction as before
