"""The dead-letter topic's messages as rows of ``dead_letters`` (sink/sql/0013). Pure.

The sink reads the dead-letter topic like its other topics and stores each message, so that what
could not be stored stays on record with the store (the topic's retention would forget it), and so
that the gap a chained event leaves when it is dead-lettered can be told from a deletion:
``provline verify`` and the complete trace look a missing predecessor's hash up here
(:func:`gaps`; the read is ``sink.queries.dead_lettered``).

Which event a dead letter held: its own envelope when the message's bytes decode (the sink's dead
letters keep the bytes as read), else the headers that name it (a processor's message the broker
refused for its size has no bytes: provline.schemas.dead_letters), else none ('' ids and hash).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from provline.schemas import Catalog, SchemaError
from provline.schemas.dead_letters import (
    ERROR,
    EVENT_HASH,
    EVENT_ID,
    EVENT_SESSION,
    REASON,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
)

TABLE = "dead_letters"
COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset", "reason", "error", "source_topic", "source_partition",
           "source_offset", "event_id", "hash", "producer_session", "kind", "raw", "stored")


# as confluent_kafka.Message.headers() gives them
MessageHeaders = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None


class DeadLetterMessage(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> MessageHeaders: ...


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value or ""


def _number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return -1


def dead_letter_row(message: DeadLetterMessage, catalog: Catalog, stored: datetime) -> tuple[Any, ...]:
    """The ``dead_letters`` row of one message of the dead-letter topic, in :data:`COLUMNS` order."""
    given = message.headers() or []
    headers = {name: _text(value) for name, value in (given.items() if isinstance(given, dict) else given)}
    raw = message.value() or b""
    event_id, event_hash, session, kind = headers.get(EVENT_ID, ""), headers.get(EVENT_HASH, ""), \
        headers.get(EVENT_SESSION, ""), ""
    if raw:
        try:
            event = catalog.decode(raw)
        except (SchemaError, ValueError):
            pass  # not an event's bytes (that may be why it was dead-lettered): the headers are all there is
        else:
            value = event.value
            event_id, event_hash, kind = str(value.get("event_id") or ""), str(value.get("hash") or ""), event.record
            session = str((value.get("producer") or {}).get("session_id") or "")
    return (
        message.topic() or "", message.partition() or 0, message.offset() or 0,
        headers.get(REASON) or "Unknown", headers.get(ERROR, ""), headers.get(SOURCE_TOPIC, ""),
        _number(headers.get(SOURCE_PARTITION, "-1")), _number(headers.get(SOURCE_OFFSET, "-1")),
        event_id, event_hash, session, kind, raw, stored,
    )


def describe(reason: str, error: str, source_topic: str, source_partition: int, source_offset: int) -> str:
    """How a finding names a dead letter: why, and where the message was read (when it was)."""
    where = (f" (read from {source_topic}[{source_partition}]@{source_offset})" if source_offset >= 0
             else f" (made for {source_topic})" if source_topic else "")
    return f"{reason}: {error[:200]}{where}"


Link = tuple[str, str]  # (producer session, hash) an event links to


def gaps(links: Iterable[Link], rows: Iterable[Sequence[Any]]) -> dict[Link, str]:
    """Of ``links``, those a dead letter of their session (or of no named session) held and the ledger never
    recorded stored, each with how its dead letter names itself (:func:`describe`). ``rows``: what
    ``dead_lettered.sql`` answers, (what, hash, session, reason, error, source topic, partition, offset)."""
    letters: dict[Link, str] = {}
    stored: set[Link] = set()
    for what, event_hash, session, reason, error, topic, partition, offset in rows:
        if what == "stored":
            stored.add((str(session), str(event_hash)))
        else:
            letters[(str(session), str(event_hash))] = describe(str(reason), str(error), str(topic), int(partition),
                                                                int(offset))
    found = {}
    for session, event_hash in links:
        letter = letters.get((session, event_hash)) or letters.get(("", event_hash))
        if letter is not None and (session, event_hash) not in stored:
            found[(session, event_hash)] = letter
    return found
