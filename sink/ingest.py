"""Events into ClickHouse without decoding them in Python: Avro containers that ClickHouse reads.

The sink's hot path does not decode events. The messages of one kind in a batch become one Avro
object container, whose schema is the kind's current schema with four origin fields in front
(:data:`ORIGIN_FIELDS`: the exact message, its topic, partition and offset). An Avro record is
its fields' encodings one after the other, so a message becomes a container record by joining
a few byte strings with the Avro body it already carries.

The container is inserted into a Null-engine *ingest table*; a materialized view turns each row
into a row of the event table (sink/rows.py): typed key columns, the event as JSON
(``payload``), ``raw`` and the Kafka origin. Derived tables (prediction_index, the "served"
lineage edges) are materialized views of prediction_traces, defined in sink/sql/derive_*.sql.
ClickHouse's C++ Avro reader and JSON writer do in microseconds what fastavro and a JSON
encoder did in tens of microseconds per event.

The view refuses (``throwIf``) an event without an event id or hash; a container that does not
parse fails its insert too. The writer then decodes that kind's messages in Python to find and
dead-letter the bad ones (:func:`provline.sink.writer.validate`), and inserts the rest.

Pure functions; sink/store.py applies the DDL (:func:`provline.sink.store.ensure_views`).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro

from provline.schemas import Catalog
from provline.schemas.compiled import encode_long
from provline.sink.rows import TABLES, TableSpec

Position = tuple[str, int, int]  # (topic, partition, offset) of one message
ORIGIN_FIELDS: tuple[tuple[str, str], ...] = (
    ("_raw", "bytes"), ("_topic", "string"), ("_partition", "int"), ("_offset", "long"),
)
VIEW_PREFIX = "provline_view_"
INGEST_PREFIX = "ingest_"
# Settings under which the views write payload JSON: ISO-8601 UTC datetimes, plain numbers and slashes.
JSON_SETTINGS = (
    "date_time_output_format = 'iso', output_format_json_quote_64bit_integers = 0, "
    "output_format_json_escape_forward_slashes = 0, session_timezone = 'UTC', "
    "enable_named_columns_in_function_tuple = 1"  # tuple(*) keeps the field names: a JSON object
)
DERIVED = {"prediction_index": "derive_prediction_index.sql", "lineage_edges": "derive_served_edges.sql"}
_NAIVE_DATETIME = re.compile(r"DateTime64\((\d)\)")


@dataclass(frozen=True)
class IngestFormat:
    """How the messages of one event kind become one Avro container for its ingest table."""

    kind: str
    spec: TableSpec
    revision: int
    header: bytes  # the container's header, ending with its sync marker
    sync: bytes
    bytes_fields: tuple[str, ...]  # top-level fields of Avro type bytes: base64 in the payload JSON

    @property
    def ingest_table(self) -> str:
        return f"{INGEST_PREFIX}{self.spec.table}_v{self.revision}"

    def container(self, raws: Sequence[bytes], bodies: Sequence[bytes], positions: Sequence[Position]) -> bytes:
        """An Avro object container, one block without compression: a record per message.

        A record is the origin fields (the message, its topic, partition and offset), then the
        event's Avro body in the current schema (``bodies``: the message minus its header).
        """
        origins: dict[tuple[str, int], bytes] = {}  # topic and partition, encoded
        offset_rests: dict[int, bytes] = {}
        parts: list[bytes] = []
        for raw, body, (topic, partition, offset) in zip(raws, bodies, positions, strict=True):
            origin = origins.get((topic, partition))
            if origin is None:
                data = topic.encode()
                origin = origins[(topic, partition)] = encode_long(len(data)) + data + encode_long(partition)
            if offset < 64:
                encoded_offset = encode_long(offset)
            else:
                rest = offset_rests.get(offset >> 6)
                if rest is None:
                    rest = offset_rests[offset >> 6] = _varint(offset >> 6)
                encoded_offset = _OFFSET_FIRST_BYTES[offset & 63] + rest
            parts += (encode_long(len(raw)), raw, origin, encoded_offset, body)
        block = b"".join(parts)
        return b"".join((self.header, encode_long(len(raws)), encode_long(len(block)), block, self.sync))


# A Kafka offset n >= 64 is encoded (zigzag: 2n) as the first seven bits of 2n with the continuation
# bit, then the varint of n >> 6, which 64 consecutive offsets share: half the framing's time was
# encode_long of large offsets (bench/sink.py).
_OFFSET_FIRST_BYTES = tuple(bytes([(low << 1) | 0x80]) for low in range(64))


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _has_bytes(avro_type: Any) -> bool:
    if isinstance(avro_type, list):
        return any(_has_bytes(member) for member in avro_type)
    if isinstance(avro_type, dict):
        nested = [f["type"] for f in avro_type.get("fields", [])] + [avro_type.get("items"), avro_type.get("values")]
        return avro_type.get("type") == "bytes" or any(_has_bytes(t) for t in nested if t is not None)
    return avro_type == "bytes"


def _bytes_fields(schema: dict[str, Any]) -> tuple[str, ...]:
    """Top-level fields of type bytes (alone or in a union); nested ones are refused with the reason."""
    found = []
    for field in schema["fields"]:
        types = field["type"] if isinstance(field["type"], list) else [field["type"]]
        if "bytes" in types:
            found.append(field["name"])
        elif _has_bytes(types):
            raise ValueError(
                f"{schema['name']}.{field['name']} nests an Avro bytes field; the payload JSON encodes only "
                "top-level bytes as base64 (sink/ingest.py): make it a top-level field or a string"
            )
    return tuple(found)


def current_body(catalog: Catalog, raw: bytes) -> tuple[str, bytes]:
    """(kind, Avro body in the kind's current schema) of an encoded event: its own body, or for an event
    of an older writer schema the decoded event encoded again in the current one. SchemaError when the
    bytes are not an event."""
    writer, start = catalog.writer_for(raw)
    if writer is catalog.current(writer.record):
        return writer.record, raw[start:]
    return writer.record, catalog.encode_body(writer.record, catalog.decode(raw).value)


@cache
def ingest_format(catalog: Catalog, kind: str) -> IngestFormat:
    current = catalog.current(kind)
    schema = {key: value for key, value in current.parsed.items() if not key.startswith("__")}  # fastavro's marks
    wrapper = {**schema, "fields": [{"name": n, "type": t} for n, t in ORIGIN_FIELDS] + list(schema["fields"])}
    sync = hashlib.sha256(current.fingerprint).digest()[:16]
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(wrapper), [], sync_marker=sync)
    header = buffer.getvalue()
    if not header.endswith(sync):
        raise RuntimeError(f"fastavro wrote a {kind} container header that does not end with its sync marker")
    return IngestFormat(
        kind=kind, spec=TABLES[kind], revision=current.revision, header=header, sync=sync,
        bytes_fields=_bytes_fields(schema),
    )


def ingest_table_ddl(fmt: IngestFormat, columns: list[tuple[str, str]]) -> str:
    """The Null-engine ingest table, with the column types ClickHouse infers from the container's schema.

    Avro timestamps carry no time zone; ClickHouse would read them in the server's, so they are
    pinned to UTC.
    """
    utc = r"DateTime64(\1, 'UTC')"
    body = ",\n    ".join(f"`{name}` {_NAIVE_DATETIME.sub(utc, kind)}" for name, kind in columns)
    return f"CREATE TABLE IF NOT EXISTS {fmt.ingest_table}\n(\n    {body}\n)\nENGINE = Null"


_REFUSE_UNSEALED = (
    "throwIf(event_id = '' OR hash = '', 'an event has an empty event_id or hash; producers must set a UUIDv7 "
    "and seal every event (schemas.integrity.HashChain)') = 0"
)


def event_view_select(fmt: IngestFormat, source: str | None = None) -> str:
    """The materialized view's SELECT: ingest row -> event table row. ``source``: where the ingest rows
    come from instead of the ingest table (``provline verify`` re-derives stored rows through it)."""
    origin = ", ".join(name for name, _ in ORIGIN_FIELDS)
    replace = ", ".join(f"base64Encode({name}) AS {name}" for name in fmt.bytes_fields)
    event = f"* EXCEPT ({origin})" + (f" REPLACE ({replace})" if replace else "")
    columns = [f"{expression} AS {name}" for name, expression in fmt.spec.expressions] + [
        "payload", "_raw AS raw", "_topic AS kafka_topic", "_partition AS kafka_partition", "_offset AS kafka_offset",
    ]
    # The payload is made in a subquery: next to the outer aliases, * would name some columns table.column.
    return (
        "SELECT\n    " + ",\n    ".join(columns) + "\n"
        f"FROM (SELECT *, toJSONString(tuple({event})) AS payload FROM {source or fmt.ingest_table})\n"
        f"WHERE {_REFUSE_UNSEALED}\n"
        "LIMIT 1 BY event_id\n"  # an event repeated within one insert is stored once
        f"SETTINGS {JSON_SETTINGS}"
    )


LEDGER_TABLE = "event_ledger"
ENVELOPE_FIELDS = ("event_id", "event_time", "producer", "prev_hash", "hash", "signature")
# event_ledger.content_digest: the SHA-256 of the event's JSON (as in ``payload``) without its envelope
# members. The same for an event a producer emitted twice (a processors worker taking over a crashed
# one's batch), different for one replaced by other contents. The ledger views serialise the ingest
# row's contents (no JSON is parsed: the sink's hot path); a stored row's digest is taken from its
# payload, where the envelope comes first (every schema starts with ENVELOPE_FIELDS), so the contents
# are the members after the signature's: null or base64, neither holds a comma.
_SIGNATURE_MEMBER = '"signature":'
CONTENT_OF_PAYLOAD = (
    f"hex(SHA256(concat('{{', substring(payload, position(payload, ',', position(payload, '{_SIGNATURE_MEMBER}') "
    f"+ {len(_SIGNATURE_MEMBER)}) + 1))))"
)
# Rows ledgered before sink/sql/0007 carry content_sha256, a digest of the same contents made another
# way (it re-parsed the payload per row), and no content_digest: ids are compared within each kind.
LEDGER_CONTENTS = ("greatest(uniqExactIf(content_sha256, content_sha256 != ''), "
                   "uniqExactIf(content_digest, content_digest != ''))")
LEDGER_COLUMNS = ("event_id, hash, content_digest, event_table, producer_session, event_time, kafka_topic, "
                  "kafka_partition, kafka_offset, inserted, prev_hash")


def ledger_rows_of(table: str, where: str) -> str:
    """The ledger rows of ``table``'s stored rows matching ``where``, in the order of :data:`LEDGER_COLUMNS`:
    what the migrations backfill, and what the sink restores for rows a predecessor stored but was
    killed before it ledgered."""
    return (
        f"SELECT event_id, hash, {CONTENT_OF_PAYLOAD}, '{table}', producer_session, event_time, kafka_topic, "
        f"kafka_partition, kafka_offset, now64(6), ifNull(prev_hash, '') FROM {table} WHERE {where}"
    )


def ledger_select(fmt: IngestFormat) -> str:
    """The SELECT of an event kind's ledger view: every row its ingest table receives, into event_ledger.

    A view on the ingest table beside the event table's own, not one on the event table: a view of
    a view's table is a chain, and a sink killed mid-insert then left rows the retried insert's
    deduplication did not recognise (tests/integration/test_sink_crash.py under load). It refuses
    and collapses rows as the event table's view does, and serialises only the contents: the
    digest equals :data:`CONTENT_OF_PAYLOAD` over the stored row (tests/integration/test_sink_ledger.py)."""
    skipped = ", ".join([name for name, _ in ORIGIN_FIELDS] + list(ENVELOPE_FIELDS))
    replace = ", ".join(f"base64Encode({name}) AS {name}" for name in fmt.bytes_fields if name not in ENVELOPE_FIELDS)
    contents = f"* EXCEPT ({skipped})" + (f" REPLACE ({replace})" if replace else "")
    return (
        "SELECT event_id, hash, hex(SHA256(contents)) AS content_digest, "
        f"'{fmt.spec.table}' AS event_table, producer.session_id AS producer_session, event_time, "
        "_topic AS kafka_topic, _partition AS kafka_partition, _offset AS kafka_offset, now64(6) AS inserted, "
        "ifNull(prev_hash, '') AS prev_hash\n"
        f"FROM (SELECT *, toJSONString(tuple({contents})) AS contents FROM {fmt.ingest_table})\n"
        f"WHERE {_REFUSE_UNSEALED}\n"
        "LIMIT 1 BY event_id\n"
        f"SETTINGS {JSON_SETTINGS}"
    )


def derived_select(table: str, source: str) -> str:
    """The SELECT that derives ``table``'s rows from prediction_traces rows read from ``source``."""
    text = (resources.files("provline.sink") / "sql" / DERIVED[table]).read_text(encoding="utf-8")
    return text.replace("{source}", source).strip().rstrip(";")


def view_ddl(target: str, select: str) -> tuple[str, str]:
    """``(view name, CREATE statement)``; the name ends with a digest of the definition, so a changed
    definition is a new view and the old one is dropped (:func:`ensure_views`)."""
    digest = hashlib.sha256(f"{target}\n{select}".encode()).hexdigest()[:10]
    view = f"{VIEW_PREFIX}{target}_{digest}"
    return view, f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} TO {target} AS\n{select}"
