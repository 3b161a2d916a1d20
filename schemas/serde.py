"""Avro serde for provline events.

The wire format is Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema + Avro binary body. The writer schema is found by fingerprint
among the schemas provline ships, so no schema registry is needed; a message in Confluent's
registry framing (``00`` + schema id) is refused with the reason.

Every ``*.avsc`` in ``schemas/avsc`` is a writer schema provline has released, named
``<Record>.v<N>.avsc``; the highest ``N`` of a record is its current reader schema, and older
writer schemas are resolved against it (Avro schema resolution). Schemas are parsed once per
catalog; :func:`default_catalog` shares one per process. Encoding and decoding are thread-safe.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint as schema_fingerprint
from fastavro.schema import to_parsing_canonical_form

from provline.schemas.compiled import NotFast, compile_encoder
from provline.schemas.errors import TOMBSTONE, CorruptEventError, InvalidEventError, UnknownSchemaError

AVSC_DIR = Path(__file__).resolve().parent / "avsc"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"  # recognised only to say why such a message is refused
NAMESPACE = "provline.v1"
_FILE_NAME = re.compile(r"^(?P<record>[A-Za-z]+)\.v(?P<revision>\d+)\.avsc$")

Record = dict[str, Any]


@dataclass(frozen=True)
class WriterSchema:
    record: str  # short record name, e.g. "RunEvent"
    revision: int
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


@dataclass(frozen=True)
class Decoded:
    record: str
    value: Record
    writer: WriterSchema


def _fingerprint(schema: Any) -> bytes:
    crc = int(schema_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), 16)
    return struct.pack("<Q", crc)


def load_writer_schema(raw: Mapping[str, Any] | str, *, record: str = "", revision: int = 0) -> WriterSchema:
    schema = json.loads(raw) if isinstance(raw, str) else dict(raw)
    parsed = fastavro.parse_schema(schema)
    name = record or str(schema["name"]).rsplit(".", 1)[-1]
    return WriterSchema(record=name, revision=revision, parsed=parsed, fingerprint=_fingerprint(parsed))


class Catalog:
    """All released writer schemas, the current reader schema per record, and the codecs."""

    def __init__(self, avsc_dir: Path = AVSC_DIR) -> None:
        self._by_fingerprint: dict[bytes, WriterSchema] = {}
        self._current: dict[str, WriterSchema] = {}
        for path in sorted(avsc_dir.glob("*.avsc")):
            match = _FILE_NAME.match(path.name)
            if match is None:
                raise UnknownSchemaError(f"{path.name}: schema files are named <Record>.v<N>.avsc")
            writer = load_writer_schema(
                path.read_text(), record=match["record"], revision=int(match["revision"])
            )
            self._by_fingerprint[writer.fingerprint] = writer
            current = self._current.get(writer.record)
            if current is None or writer.revision > current.revision:
                self._current[writer.record] = writer
        self._compiled = {record: compile_encoder(writer.parsed) for record, writer in self._current.items()}

    @property
    def records(self) -> list[str]:
        return sorted(self._current)

    def current(self, record: str) -> WriterSchema:
        try:
            return self._current[record]
        except KeyError:
            raise UnknownSchemaError(
                f"no schema for event kind {record!r}; known kinds: {', '.join(self.records)}"
            ) from None

    def encode(self, record: str, value: Record) -> bytes:
        """Encode with the current schema, in single-object encoding."""
        return self.header(record) + self.encode_body(record, value)

    def header(self, record: str) -> bytes:
        """The wire-format header that goes before an Avro body of ``record``'s current schema."""
        return SINGLE_OBJECT_MAGIC + self.current(record).fingerprint

    def encode_body(self, record: str, value: Record) -> bytes:
        """Avro binary body only: the canonical encoding that hash chains are computed over."""
        compiled = self._compiled.get(record)
        if compiled is not None:
            out = bytearray()
            try:
                compiled(value, out)
                return bytes(out)
            except (NotFast, ValueError, OverflowError):  # fastavro takes the value, or names what is wrong
                pass
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, self.current(record).parsed, value, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise InvalidEventError(f"{record} does not match schema {NAMESPACE}.{record}: {exc}") from exc
        return buffer.getvalue()

    def writer_for(self, data: bytes) -> tuple[WriterSchema, int]:
        """The writer schema named by the header of ``data``, and where the Avro body starts."""
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise CorruptEventError(f"event of {len(data)} bytes is shorter than its 10-byte header")
            writer = self._by_fingerprint.get(data[2:10])
            if writer is None:
                raise UnknownSchemaError(
                    f"schema fingerprint {data[2:10].hex()} not found in schemas/; "
                    "upgrade provline or configure a schema registry"
                )
            return writer, 10
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            raise UnknownSchemaError(
                f"event is in Confluent schema-registry framing (schema id {struct.unpack('>I', data[1:5])[0]}); "
                "provline reads Avro single-object encoding (c301 + schema fingerprint): produce provline "
                "events with provline.producers or provline.schemas.Catalog.encode"
            )
        raise CorruptEventError(
            f"event starts with {data[:2].hex() or 'nothing'}, not Avro single-object encoding (c301); "
            "the producer is not writing provline events"
        )

    def decode(self, data: bytes | None) -> Decoded:
        """Decode an event, resolving its writer schema against the current reader schema.

        Raises CorruptEventError for anything that is not a provline event, a tombstone (None) included.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CorruptEventError(
                TOMBSTONE if data is None else
                f"a {type(data).__name__} is not an encoded event; events are bytes"
            )
        data = bytes(data)
        writer, body_start = self.writer_for(data)
        reader = self.current(writer.record)
        body = io.BytesIO(memoryview(data)[body_start:])
        try:
            value = fastavro.schemaless_reader(body, writer.parsed, None if reader is writer else reader.parsed)
        except Exception as exc:  # fastavro raises many types on garbage; all mean the same here
            raise CorruptEventError(
                f"{writer.record} event (schema {writer.fingerprint_hex}) does not decode: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        trailing = len(data) - body_start - body.tell()
        if trailing:
            raise CorruptEventError(
                f"{writer.record} event (schema {writer.fingerprint_hex}) has {trailing} bytes after its body"
            )
        if not isinstance(value, dict):  # every provline schema is a record
            raise CorruptEventError(f"{writer.record} event (schema {writer.fingerprint_hex}) is not a record")
        return Decoded(record=writer.record, value=value, writer=writer)


@cache
def default_catalog() -> Catalog:
    """The process-wide catalog of ``schemas/avsc`` (parsed once, on first use)."""
    return Catalog()
