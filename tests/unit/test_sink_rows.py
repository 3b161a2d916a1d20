from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.compiled import encode_long
from provline.schemas.frames import FRAMES
from provline.schemas.integrity import HashChain
from provline.sink.accesslog import ACCESS_LOG_COLUMNS
from provline.sink.ingest import ORIGIN_FIELDS, event_view_select, ingest_format
from provline.sink.lineage import EDGE_COLUMNS
from provline.sink.rows import TABLES, table_for
from provline.sink.store import migration_files, split_statements
from provline.sink.writer import first_offsets, next_offsets, plan_batch
from tests.helpers import StoredMessage, seal

WHEN = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def event(kind: str, **fields: Any) -> dict[str, Any]:
    value = {**new_envelope(producer_identity("test", "s1"), event_time=WHEN), **fields}
    return seal(HashChain(default_catalog()), kind, value)


def run_event() -> dict[str, Any]:
    return event(
        "RunEvent", run_id="run-1", name="train", state="COMPLETED", stage="training",
        code={"repo": "git@x:y.git", "commit": "abc123", "branch": "main", "dirty": False, "diff_sha256": None,
              "entrypoint": "train.py", "argv": []},
    )


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no sink table for event kind 'Nope'.*RunEvent"):
        table_for("Nope")


def test_every_kind_in_the_contract_has_a_table() -> None:
    assert set(TABLES) == set(default_catalog().records) - FRAMES  # a frame's events have their tables


def ddl_columns() -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for _, text in migration_files():
        for statement in split_statements(text):
            match = re.search(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*?)\n\)", statement, re.S)
            added = re.search(r"^ALTER TABLE (\w+)\s+ADD COLUMN", statement, re.M)
            if added and " MATERIALIZED " in statement:  # computed by the engine, never written by the sink
                continue
            if added:
                for column, after in re.findall(r"ADD COLUMN IF NOT EXISTS (\w+)[^,;]*?(?:AFTER (\w+))?\s*(?:,|$)",
                                                statement):
                    columns = tables[added.group(1)]
                    columns.insert(columns.index(after) + 1 if after else len(columns), column)
                continue
            if match is None:
                allowed = (r"^(ALTER TABLE \w+\s+(MODIFY SETTING|ADD INDEX|ADD PROJECTION|MATERIALIZE PROJECTION)"
                           r"|INSERT INTO event_ledger (\(|SELECT))")
                assert re.search(allowed, statement, re.M), statement
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
    assert tables["access_log"] == list(ACCESS_LOG_COLUMNS)
    assert tables["prediction_index"] == [
        "model_name", "model_version", "event_time", "prediction_id", "event_id", "endpoint", "complete",
        "training_run_id",
    ]


def test_plan_batch_groups_messages_per_table_and_dead_letters_garbage() -> None:
    catalog = default_catalog()
    messages = [
        StoredMessage("t", 0, 5, catalog.encode("RunEvent", run_event())),
        StoredMessage("t", 0, 6, b"garbage"),
        StoredMessage("t", 1, 9, catalog.encode("RunEvent", run_event())),
        StoredMessage("t", 1, 10, None),
    ]
    plan = plan_batch(messages, catalog)
    assert list(plan.events) == ["run_events"]
    assert plan.events["run_events"].positions == [("t", 0, 5), ("t", 1, 9)]
    assert {row[2] for row, _ in plan.edges} == {"code"}  # lineage kinds are decoded for their edges
    assert [(d.origin.offset, d.reason) for d in plan.dead_letters] == [(6, "CorruptEventError"),
                                                                        (10, "CorruptEventError")]
    headers = dict(plan.dead_letters[0].headers())
    assert headers["provline-source-offset"] == b"6" and headers["provline-source-topic"] == b"t"
    assert next_offsets(messages) == {("t", 0): 7, ("t", 1): 11}
    assert first_offsets(messages) == {("t", 0): 5, ("t", 1): 9}


def test_encode_long_is_avro_zigzag_for_small_and_large_numbers() -> None:
    for number in (0, 1, 63, 64, 8191, 8192, 16383, 16384, 2**31 - 1, 2**40 + 5):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, "long", number)
        assert encode_long(number) == buffer.getvalue(), number


def test_container_is_an_avro_file_of_origin_fields_and_events() -> None:
    catalog = default_catalog()
    value = run_event()
    message = catalog.encode("RunEvent", value)
    other = {**run_event(), "run_id": "run-2"}
    fmt = ingest_format(catalog, "RunEvent")
    raws = [message, catalog.encode("RunEvent", other)]
    bodies = [message[10:], catalog.encode_body("RunEvent", other)]
    positions = [("p.lineage.v1", 2, 41), ("p.lineage.v1", 2, 2**40)]
    read = list(fastavro.reader(io.BytesIO(fmt.container(raws, bodies, positions))))
    assert [r["_offset"] for r in read] == [41, 2**40]
    assert read[0]["_raw"] == message and read[0]["_topic"] == "p.lineage.v1" and read[0]["_partition"] == 2
    assert read[0]["run_id"] == "run-1" and read[1]["run_id"] == "run-2"
    assert read[0]["code"]["commit"] == "abc123" and read[0]["event_time"] == WHEN
    assert [name for name, _ in ORIGIN_FIELDS] == [f["name"] for f in fastavro.reader(
        io.BytesIO(fmt.container([], [], []))).writer_schema["fields"][:4]]


def test_container_offsets_of_every_size_read_back_as_written() -> None:
    """The framing encodes large offsets in two parts (sink/ingest.py); Avro readers see plain longs."""
    catalog = default_catalog()
    message = catalog.encode("RunEvent", run_event())
    fmt = ingest_format(catalog, "RunEvent")
    offsets = [0, 1, 63, 64, 65, 127, 128, 4095, 4096, 8191, 8192, 2**31, 2**40 + 5, 2**63 - 1]
    offsets += list(range(10**9 - 70, 10**9 + 70))  # a run that crosses shared high parts
    positions = [("t", partition, offset) for partition in (0, 7) for offset in offsets]
    container = fmt.container([message] * len(positions), [message[10:]] * len(positions), positions)
    assert [(r["_partition"], r["_offset"]) for r in fastavro.reader(io.BytesIO(container))] == [
        (partition, offset) for _, partition, offset in positions]


def test_event_view_encodes_bytes_as_base64_and_refuses_unsealed_events() -> None:
    select = event_view_select(ingest_format(default_catalog(), "InferenceRequest"))
    assert "base64Encode(body) AS body" in select and "base64Encode(signature) AS signature" in select
    assert "throwIf(event_id = '' OR hash = ''" in select
    assert "prediction_id AS prediction_id" in select and "producer.session_id AS producer_session" in select
