"""The ledger's content digests (issue 15): the ledger views digest an event's contents from the
ingest row without parsing JSON; the sink's restore and the migrations digest a stored row's payload.
Both must give the same digest for every kind of event, whatever its values, or a copy restored after
a crash, or backfilled by a migration, would read as a replacement.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from provline.sink.ingest import CONTENT_OF_PAYLOAD, ENVELOPE_FIELDS, LEDGER_TABLE
from provline.sink.rows import TABLES
from provline.sink.writer import insert_plan, plan_batch
from tests.helpers import StoredMessage

pytestmark = pytest.mark.integration

# What JSON and the digest's slicing of the payload could trip on: separators, quotes, escapes, the
# member name the slicing looks for, slashes (not escaped in payload), and text beyond ASCII.
AWKWARD = 'a,b "c" \\ / {"signature": null}, é ∑ \n\t'


def awkward_value(avro_type: Any, catalog_names: dict[str, Any], variant: int) -> Any:
    """A value of ``avro_type`` full of what JSON encodes specially; ``variant`` makes values differ."""
    if isinstance(avro_type, list):  # a union: its last member, which is the non-null one in our schemas
        return awkward_value(avro_type[-1], catalog_names, variant)
    if isinstance(avro_type, str):
        if avro_type in catalog_names:
            return awkward_value(catalog_names[avro_type], catalog_names, variant)
        return {"string": f"{AWKWARD}{variant}", "bytes": f'\x00,"{variant}'.encode(), "long": 2**53 + variant,
                "int": -variant, "double": 0.1 + variant, "float": 1.5, "boolean": variant % 2 == 0,
                "null": None}[avro_type]
    if avro_type.get("logicalType") == "timestamp-micros":
        return datetime(2026, 5, 1, 9, 0, variant, 123456, tzinfo=UTC)
    kind = avro_type["type"]
    if kind == "record":
        catalog_names[avro_type["name"]] = avro_type
        return {f["name"]: awkward_value(f["type"], catalog_names, variant) for f in avro_type["fields"]}
    if kind == "enum":
        return avro_type["symbols"][variant % len(avro_type["symbols"])]
    if kind == "array":
        return [awkward_value(avro_type["items"], catalog_names, variant)] * 2
    if kind == "map":
        return {f'k,"{variant}"': awkward_value(avro_type["values"], catalog_names, variant)}
    return awkward_value(kind, catalog_names, variant)


def every_kind(variants: int) -> list[bytes]:
    """Sealed events of every kind, ``variants`` of each, every content field set to an awkward value."""
    catalog = default_catalog()
    chain = HashChain(catalog)
    producer = producer_identity("ledger-test", "ledger-session")
    raws = []
    for kind in TABLES:
        schema = catalog.current(kind).parsed
        for variant in range(variants):
            names: dict[str, Any] = {}
            contents = {f["name"]: awkward_value(f["type"], names, variant) for f in schema["fields"]
                        if f["name"] not in ENVELOPE_FIELDS}
            raws.append(catalog.header(kind) + chain.seal_encode(kind, {**new_envelope(producer), **contents}))
    return raws


def test_the_views_digest_every_kind_as_its_stored_payload_gives_it(store: Client) -> None:
    catalog = default_catalog()
    raws = every_kind(variants=3)
    plan = plan_batch([StoredMessage("t", 0, offset, raw) for offset, raw in enumerate(raws)], catalog)
    assert not plan.dead_letters, [letter.error for letter in plan.dead_letters]
    assert insert_plan(store, plan, catalog) == []
    for spec in TABLES.values():
        rows = store.query(
            f"SELECT s.event_id, l.content_digest, {CONTENT_OF_PAYLOAD.replace('payload', 's.payload')}\n"
            f"FROM {spec.table} AS s LEFT JOIN {LEDGER_TABLE} AS l ON s.event_id = l.event_id AND s.hash = l.hash"
        ).result_rows
        assert len(rows) == 3, spec.table
        assert all(view == restored and len(view) == 64 for _, view, restored in rows), (spec.table, rows)
        assert len({view for _, view, _ in rows}) == 3, spec.table  # other contents, another digest


def test_the_same_contents_from_another_session_give_the_same_digest(store: Client) -> None:
    catalog = default_catalog()
    first, again = (HashChain(catalog) for _ in range(2))
    contents = {"prediction_id": "p1", "endpoint": "/predict", "complete": True, "model_name": AWKWARD}
    event_id = new_envelope(producer_identity("processors", "first"))["event_id"]  # re-emitted under its id
    raws = []
    for chain, session in ((first, "first"), (again, "again")):
        value = {**new_envelope(producer_identity("processors", session)), **contents, "event_id": event_id}
        raws.append(catalog.header("PredictionTrace") + chain.seal_encode("PredictionTrace", value))
    for offset, raw in enumerate(raws):  # one insert each: within one insert an id is ledgered once
        assert insert_plan(store, plan_batch([StoredMessage("t", 0, offset, raw)], catalog), catalog) == []
    digests = store.query(f"SELECT content_digest FROM {LEDGER_TABLE}").result_rows
    assert len(digests) == 2 and digests[0] == digests[1]
