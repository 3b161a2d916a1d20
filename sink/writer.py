"""The Kafka -> ClickHouse loop: each event stored exactly once, offsets committed after the insert.

Events are not decoded here: each kind's messages go to ClickHouse as one Avro container, which
ClickHouse turns into rows (sink/ingest.py). A batch's offsets are committed only after every
insert of the batch succeeded and its dead letters were delivered, so a crash re-delivers the
batch; the "in flight" commit metadata and a lookup by Kafka offset make the redelivered events
that were already inserted be skipped (no duplicate rows), and every insert carries a
deduplication token. See :class:`SinkWriter`.

:func:`plan_batch`, :func:`validate`, :func:`in_flight_ranges` and the offset helpers are pure;
:class:`SinkWriter` is the I/O shell.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from provline.schemas import Catalog, InvalidEventError, SchemaError, Topics, default_catalog
from provline.schemas.dead_letters import Headers, dead_letter_headers
from provline.schemas.frames import events_in
from provline.sink import metrics
from provline.sink.dead_letters import COLUMNS as DEAD_LETTER_COLUMNS
from provline.sink.dead_letters import TABLE as DEAD_LETTERS_TABLE
from provline.sink.dead_letters import MessageHeaders, dead_letter_row
from provline.sink.errors import DeadLetterError
from provline.sink.ingest import (
    DERIVED,
    LEDGER_COLUMNS,
    LEDGER_TABLE,
    IngestFormat,
    Position,
    current_body,
    derived_select,
    ingest_format,
    ledger_rows_of,
)
from provline.sink.lineage import EDGE_COLUMNS, LINEAGE_KINDS, edge_rows
from provline.sink.rows import Origin
from provline.sink.settings import ServeSettings

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 0.1  # how often the loop looks at the stop event while idle
RETRY_BACKOFF_SECONDS = 1.0
DLQ_FLUSH_TIMEOUT_SECONDS = 10.0
# Committed-offset metadata while a batch is being inserted: "the store may hold rows up to here".
IN_FLIGHT_PREFIX = "provline-in-flight:"
ASSIGN_TIMEOUT_SECONDS = 60.0


class MessageLike(Protocol):
    """The part of ``confluent_kafka.Message`` the writer reads."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> MessageHeaders: ...


@dataclass(frozen=True)
class DeadLetter:
    origin: Origin
    key: bytes | None
    reason: str  # short and stable: the error class, used as a metric label
    error: str  # the full message, for people

    def headers(self) -> Headers:
        return dead_letter_headers(self.reason, self.error, topic=self.origin.topic, partition=self.origin.partition,
                                   offset=self.origin.offset)


@dataclass(frozen=True)
class FramedEvent:
    """One event of a frame (:mod:`provline.schemas.frames`): the frame's message, with the event as value."""

    message: MessageLike
    event: bytes

    def topic(self) -> str | None:
        return self.message.topic()

    def partition(self) -> int | None:
        return self.message.partition()

    def offset(self) -> int | None:
        return self.message.offset()

    def key(self) -> bytes | None:
        return self.message.key()

    def value(self) -> bytes | None:
        return self.event

    def headers(self) -> MessageHeaders:
        return self.message.headers()


@dataclass
class TableBatch:
    """The messages of one event kind in a batch, for its ingest container (sink/ingest.py)."""

    fmt: IngestFormat
    raws: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # each event's Avro body in the current schema
    positions: list[Position] = field(default_factory=list)
    messages: list[MessageLike] = field(default_factory=list)

    def add(self, raw: bytes, body: bytes, position: Position, message: MessageLike) -> None:
        self.raws.append(raw)
        self.bodies.append(body)
        self.positions.append(position)
        self.messages.append(message)

    def without(self, positions: set[Position]) -> TableBatch:
        kept = TableBatch(self.fmt)
        for raw, body, position, message in zip(self.raws, self.bodies, self.positions, self.messages, strict=True):
            if position not in positions:
                kept.add(raw, body, position, message)
        return kept

    @cached_property
    def container(self) -> bytes:
        return self.fmt.container(self.raws, self.bodies, self.positions)


@dataclass
class BatchPlan:
    events: dict[str, TableBatch] = field(default_factory=dict)  # event table -> its messages
    # lineage_edges rows stated by lineage events (sink/lineage.py), each with its message's position
    edges: list[tuple[tuple[Any, ...], Position]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # the dead-letter topic's messages, as dead_letters rows (sink.dead_letters), each with its position
    dead_letter_rows: list[tuple[tuple[Any, ...], Position]] = field(default_factory=list)

    def without(self, positions: set[Position]) -> BatchPlan:
        """This plan minus the messages at ``positions`` (and the edges they state)."""
        return BatchPlan(
            events={table: batch.without(positions) for table, batch in self.events.items()},
            edges=[(row, position) for row, position in self.edges if position not in positions],
            dead_letters=self.dead_letters,
            dead_letter_rows=[(row, position) for row, position in self.dead_letter_rows if position not in positions],
        )


@dataclass(frozen=True)
class BatchResult:
    rows_by_table: dict[str, int]
    dead_letters: int
    committed: dict[tuple[str, int], int]  # (topic, partition) -> next offset to read
    skipped: int = 0  # redelivered events already stored


def _origin(message: MessageLike) -> Origin:
    return Origin(
        topic=message.topic() or "", partition=message.partition() or 0, offset=message.offset() or 0,
        raw=message.value() or b"",
    )


def _validate(value: dict[str, Any]) -> None:
    if not value.get("event_id"):
        raise InvalidEventError("event has an empty event_id; the producer must set a UUIDv7 (new_envelope())")
    if not value.get("hash"):
        raise InvalidEventError(
            f"event {value['event_id']} has an empty hash: it was never sealed; producers must seal events "
            "(schemas.integrity.HashChain) so that they can be verified"
        )


def _dead_letter(message: MessageLike, exc: Exception) -> DeadLetter:
    return DeadLetter(_origin(message), message.key(), type(exc).__name__, str(exc))


def plan_batch(messages: Iterable[MessageLike], catalog: Catalog, *, dead_letter_topic: str | None = None,
               now: datetime | None = None) -> BatchPlan:
    """Frame every message into its kind's ingest container; lineage events are decoded for their edges.
    Messages of ``dead_letter_topic`` become ``dead_letters`` rows (stored ``now``), never dead letters.

    The hot path reads only the wire-format header: ClickHouse decodes the body. A message in an
    older writer schema is decoded and re-encoded in the current one (the ``raw`` column keeps
    it as sent). Messages whose header names no known schema become dead letters here; bodies
    that do not decode are found when their insert fails (:func:`validate`). Pure.
    """
    plan = BatchPlan()
    stored = now or datetime.now(UTC)
    for message in messages:
        position = (message.topic() or "", message.partition() or 0, message.offset() or 0)
        if dead_letter_topic is not None and message.topic() == dead_letter_topic:
            plan.dead_letter_rows.append((dead_letter_row(message, catalog, stored), position))
            continue
        try:
            raws = events_in(catalog, message.value())
        except (SchemaError, ValueError) as exc:
            plan.dead_letters.append(_dead_letter(message, exc))
            continue
        for raw in raws:  # an exchange frame's events each stand alone: a bad one costs only itself
            event = message if len(raws) == 1 else FramedEvent(message, raw)
            try:
                kind, body = current_body(catalog, raw)
                fmt = ingest_format(catalog, kind)
                if kind in LINEAGE_KINDS:
                    decoded = catalog.decode(raw)
                    _validate(decoded.value)
                    plan.edges += [(edge, position) for edge in edge_rows(kind, decoded.value)]
            except (SchemaError, ValueError) as exc:
                plan.dead_letters.append(_dead_letter(event, exc))
                continue
            batch = plan.events.get(fmt.spec.table)
            if batch is None:  # not setdefault: that would build a TableBatch for every message
                batch = plan.events[fmt.spec.table] = TableBatch(fmt)
            batch.add(raw, body, position, event)
    return plan


def validate(messages: Iterable[MessageLike], catalog: Catalog) -> list[DeadLetter]:
    """The dead letters among ``messages``: those that do not decode, or lack an event id or hash. Pure.

    The slow path, run on the messages of an insert that ClickHouse refused.
    """
    letters = []
    for message in messages:
        try:
            _validate(catalog.decode(message.value() or b"").value)
        except (SchemaError, ValueError) as exc:
            letters.append(_dead_letter(message, exc))
    return letters


def dedup_token(table: str, positions: Sequence[Position]) -> str:
    """The insert deduplication token of one insert: the same messages into the same table, the same token."""
    digest = hashlib.sha256(table.encode())
    for topic, partition, offset in positions:
        digest.update(f"\0{topic}/{partition}/{offset}".encode())
    return digest.hexdigest()


def in_flight_metadata(end_offset: int) -> str:
    return f"{IN_FLIGHT_PREFIX}{end_offset}"


def commit_metadata(ends: dict[tuple[str, int], int], in_flight: dict[tuple[str, int], int], *,
                    inserting: bool) -> dict[tuple[str, int], str]:
    """The metadata committed with ``ends``: before an insert, "in flight up to" the batch's end or a
    predecessor's, whichever is further; after it, the predecessor's where it is further still. Pure.

    A marker is never moved back: a sink killed again before it has read up to a predecessor's end
    must leave that end to the next one, or the events in between are inserted twice.
    """
    if inserting:
        return {p: in_flight_metadata(max(end, in_flight.get(p, end))) for p, end in ends.items()}
    return {p: in_flight_metadata(in_flight[p]) for p, end in ends.items() if in_flight.get(p, -1) > end}


def parse_in_flight(metadata: str | None) -> int | None:
    """The end offset a crashed sink may have inserted up to, from committed-offset metadata."""
    if metadata and metadata.startswith(IN_FLIGHT_PREFIX):
        try:
            return int(metadata[len(IN_FLIGHT_PREFIX):])
        except ValueError:
            return None
    return None


def in_flight_ranges(
    positions: Iterable[Position], in_flight: dict[tuple[str, int], int]
) -> dict[tuple[str, int], tuple[int, int]]:
    """Per in-flight partition, the ``[first, end)`` offsets of ``positions`` a crashed sink may have stored."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for topic, partition, offset in positions:
        end = in_flight.get((topic, partition))
        if end is not None and offset < end:
            first, _ = ranges.get((topic, partition), (offset, end))
            ranges[(topic, partition)] = (min(first, offset), end)
    return ranges


def next_offsets(messages: Iterable[MessageLike]) -> dict[tuple[str, int], int]:
    """The offset to commit per partition: one past the highest offset read."""
    offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        position = (message.topic() or "", message.partition() or 0)
        offsets[position] = max(offsets.get(position, 0), (message.offset() or 0) + 1)
    return offsets


def first_offsets(messages: Iterable[MessageLike]) -> dict[tuple[str, int], int]:
    """The lowest offset read per partition: where to seek back to after a failed batch."""
    offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        position = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        offsets[position] = min(offsets.get(position, offset), offset)
    return offsets


def source_topics(topics: Topics) -> list[str]:
    return [topics.lineage, topics.inference, topics.traces, topics.drift, topics.dlq]


def consumer_config(settings: ServeSettings) -> dict[str, Any]:
    sink = settings.sink
    static = {"group.instance.id": sink.consumer_instance_id} if sink.consumer_instance_id else {}
    return settings.kafka.librdkafka(**{
        **static,
        "session.timeout.ms": int(settings.kafka.session_timeout_s * 1000),
        "group.id": sink.consumer_group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        # a topic created after the sink started (by another service) is consumed this soon
        "topic.metadata.refresh.interval.ms": int(settings.topics.metadata_refresh_s * 1000),
        # Backpressure: librdkafka stops fetching when this much is queued, so a slow store bounds
        # the memory held instead of growing it.
        "queued.max.messages.kbytes": sink.prefetch_max_bytes // 1024,
        "fetch.max.bytes": min(sink.batch_max_bytes, 50 * 1024 * 1024),
    })


def producer_config(settings: ServeSettings) -> dict[str, Any]:
    return settings.kafka.librdkafka(**{"enable.idempotence": True, "acks": "all"})


INSERT_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}


def _insert_container(client: Client, table: str, batch: TableBatch) -> None:
    with metrics.INSERT_SECONDS.labels(table=table).time():
        client.raw_insert(
            batch.fmt.ingest_table, insert_block=batch.container, fmt="Avro",
            settings={**INSERT_SETTINGS, "insert_deduplication_token": dedup_token(table, batch.positions)},
        )
    metrics.ROWS_WRITTEN.labels(table=table).inc(len(batch.raws))


def insert_events(client: Client, table: str, batch: TableBatch, catalog: Catalog) -> list[DeadLetter]:
    """Insert one kind's messages; if ClickHouse refuses them, dead-letter the bad ones and insert the rest.

    Returns the dead letters found (the caller delivers them before committing). Raises the
    insert's error when no message is at fault (the store is down, say). Blocks.
    """
    if not batch.raws:
        return []
    try:
        _insert_container(client, table, batch)
        return []
    except Exception:
        letters = validate(batch.messages, catalog)
        if not letters:
            raise
    log.warning("ClickHouse refused %d %s messages; %d of them are invalid", len(batch.raws), table, len(letters))
    _insert_container(client, table, batch.without({_position(letter.origin) for letter in letters}))
    return letters


def _position(origin: Origin) -> Position:
    return origin.topic, origin.partition, origin.offset


def insert_plan(
    client: Client, plan: BatchPlan, catalog: Catalog, *, more_clients: Sequence[Client] = ()
) -> list[DeadLetter]:
    """Insert a planned batch: lineage edges first, then the events they come from (see SinkWriter).

    With ``more_clients`` the event tables are inserted in parallel, a thread per client (ClickHouse
    decodes each container on one core; bench/sink.py: 1.4x rows/s with two). Returns the dead
    letters found by ClickHouse (:func:`insert_events`).
    """
    if plan.edges:
        rows = [row for row, _ in plan.edges]
        with metrics.INSERT_SECONDS.labels(table="lineage_edges").time():
            client.insert(
                "lineage_edges", rows, column_names=list(EDGE_COLUMNS),
                settings={"insert_deduplication_token": dedup_token("lineage_edges", [p for _, p in plan.edges])},
            )
        metrics.ROWS_WRITTEN.labels(table="lineage_edges").inc(len(rows))
    if plan.dead_letter_rows:
        rows = [row for row, _ in plan.dead_letter_rows]
        with metrics.INSERT_SECONDS.labels(table=DEAD_LETTERS_TABLE).time():
            client.insert(DEAD_LETTERS_TABLE, rows, column_names=list(DEAD_LETTER_COLUMNS), settings={
                "insert_deduplication_token": dedup_token(DEAD_LETTERS_TABLE, [p for _, p in plan.dead_letter_rows])})
        metrics.ROWS_WRITTEN.labels(table=DEAD_LETTERS_TABLE).inc(len(rows))
    for batch in plan.events.values():
        _ = batch.container  # framed here, before the threads: framing inside them measured no faster (GIL)
    clients = [client, *more_clients]
    shares: list[list[tuple[str, TableBatch]]] = [[] for _ in clients]
    by_size = sorted(plan.events.items(), key=lambda item: -len(item[1].raws))
    for index, item in enumerate(by_size):
        shares[index % len(clients)].append(item)

    def insert_share(share_client: Client, share: list[tuple[str, TableBatch]]) -> list[DeadLetter]:
        return [letter for table, batch in share for letter in insert_events(share_client, table, batch, catalog)]

    work = [(c, share) for c, share in zip(clients, shares, strict=True) if share]
    if len(work) <= 1:
        return [letter for c, share in work for letter in insert_share(c, share)]
    with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix="provline-insert") as pool:
        futures = [pool.submit(insert_share, c, share) for c, share in work]
        return [letter for future in futures for letter in future.result()]


def restore_ledger(client: Client, table: str, ranges: dict[tuple[str, int], tuple[int, int]]) -> None:
    """Ledger the rows of ``table`` in ``ranges`` that the ledger lacks; blocks.

    A sink killed mid-insert may have stored rows whose ledger rows were not written yet; the
    redelivered copies are skipped as stored, so their ledger rows are written from the table.
    """
    in_range = ("kafka_topic = {topic:String} AND kafka_partition = {partition:Int32} "
                "AND kafka_offset >= {first:Int64} AND kafka_offset < {end:Int64}")
    for (topic, partition), (first, end) in ranges.items():
        client.command(
            f"INSERT INTO {LEDGER_TABLE} ({LEDGER_COLUMNS}) {ledger_rows_of(table, in_range)} "
            f"AND (event_id, hash) NOT IN (SELECT event_id, hash FROM {LEDGER_TABLE} WHERE {in_range})",
            parameters={"topic": topic, "partition": partition, "first": first, "end": end},
        )


def rederive(client: Client, ranges: dict[tuple[str, int], tuple[int, int]]) -> None:
    """Re-derive the prediction_index and served-edge rows of stored traces in ``ranges``; blocks.

    A sink that crashed mid-insert may have stored traces whose derived rows were not written yet;
    derived tables collapse repeated rows, so deriving again is harmless.
    """
    for (topic, partition), (first, end) in ranges.items():
        source = (
            "(SELECT * FROM prediction_traces WHERE kafka_topic = {topic:String} "
            "AND kafka_partition = {partition:Int32} AND kafka_offset >= {first:Int64} AND kafka_offset < {end:Int64})"
        )
        for table in DERIVED:
            client.command(
                f"INSERT INTO {table} {derived_select(table, source)}",
                parameters={"topic": topic, "partition": partition, "first": first, "end": end},
            )


@dataclass(frozen=True)
class _Inserting:
    """A batch whose inserts were started (:meth:`SinkWriter._start`) and that is not committed yet."""

    messages: Sequence[MessageLike]
    plan: BatchPlan
    interrupted: dict[str, dict[tuple[str, int], tuple[int, int]]]  # per table, what a crashed sink left
    skipped: int  # redelivered events already stored
    end: dict[tuple[str, int], int]  # the offsets to commit
    inserted: Future[list[DeadLetter]]  # the dead letters ClickHouse's refusals named


class SinkWriter:
    """Consumes the lineage, inference, traces and drift topics into ClickHouse, each event once, and the
    dead-letter topic into ``dead_letters`` (sink.dead_letters).

    Before a batch is inserted its partitions' committed offsets are re-committed unchanged with
    "in flight up to offset E" metadata; after the inserts the new offsets are committed without
    it. A sink that starts on a partition whose metadata says "in flight" looks up which of the
    redelivered events below E are already stored (by Kafka offset) and inserts only the others,
    so a crash between insert and commit leaves no duplicate rows. Every insert also carries a
    deduplication token over its messages, so a retried identical insert is dropped by ClickHouse.

    :meth:`run` reads the next batch from Kafka while the batch before it is being inserted (on a
    thread of the writer's), and commits that one before it starts inserting the next: the reading
    and framing in Python overlap ClickHouse's work (bench/sink.py), and the commits keep their order.

    Owns one Kafka consumer and one DLQ producer; ``client`` (and ``insert_clients``, for parallel
    inserts) must not be used by other threads while :meth:`run` is going. Not thread-safe: one
    thread calls :meth:`run`, another may set the stop event.
    """

    def __init__(
        self, settings: ServeSettings, client: Client, *, catalog: Catalog | None = None,
        insert_clients: Sequence[Client] = (),
    ) -> None:
        self._settings = settings.sink
        self._client = client
        self._insert_clients = insert_clients  # more clients on the store, for parallel inserts
        self._catalog = catalog or default_catalog()
        self._topics = Topics(settings.topics.prefix)
        self._consumer = Consumer(consumer_config(settings))
        self._producer = Producer(producer_config(settings))
        self._pending: list[MessageLike] = []
        self._pending_bytes = 0
        self._in_flight: dict[tuple[str, int], int] = {}  # partitions a crashed sink may have half-done
        self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="provline-batch")
        self._inserting: _Inserting | None = None  # the batch being inserted while the next is read

    def run(self, stop_event: threading.Event) -> None:
        """Consume, insert and commit until ``stop_event`` is set; blocks. Closes the consumer at the end.

        The batch in hand when the event is set is still inserted and committed. A batch whose
        insert fails is not committed: the consumer seeks back to it and retries after a pause.
        """
        self._consumer.subscribe(source_topics(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not stop_event.is_set():
                self._fill(stop_event)  # while the batch before is being inserted
                self._flush_pending(stop_event)
            self._flush_pending(stop_event)
            self._finish_inserting(stop_event)
        finally:
            self.close()

    def close(self) -> None:
        """Waits for an insert still running (its batch is not committed), then closes; blocks."""
        self._inserter.shutdown(wait=True)
        self._producer.flush(DLQ_FLUSH_TIMEOUT_SECONDS)
        self._consumer.close()

    def _fill(self, stop_event: threading.Event) -> None:
        deadline: float | None = None
        while (
            len(self._pending) < self._settings.batch_max_events
            and self._pending_bytes < self._settings.batch_max_bytes
            and not stop_event.is_set()
        ):
            if self._inserting is not None and self._inserting.inserted.done():
                self._finish_inserting(stop_event)  # committed as soon as it is in, not when this batch is
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            timeout = POLL_INTERVAL_SECONDS if deadline is None else min(POLL_INTERVAL_SECONDS, deadline - now)
            wanted = self._settings.batch_max_events - len(self._pending)
            for message in self._consumer.consume(num_messages=wanted, timeout=timeout):
                error = message.error()
                if error is None:
                    self._pending.append(message)
                    self._pending_bytes += len(message.value() or b"")
                else:
                    self._on_consumer_error(error)
            if self._pending and deadline is None:
                deadline = time.monotonic() + self._settings.batch_max_s

    def _on_consumer_error(self, error: KafkaError) -> None:
        metrics.CONSUMER_ERRORS.labels(code=error.name()).inc()
        if error.fatal():
            raise KafkaException(error)
        log.warning("Kafka consumer error (will keep consuming): %s", error)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        deadline = time.monotonic() + ASSIGN_TIMEOUT_SECONDS
        while True:
            try:
                found = consumer.committed(partitions, timeout=DLQ_FLUSH_TIMEOUT_SECONDS)
                break
            except KafkaException as exc:
                # Without the committed metadata the sink cannot know what a predecessor left half
                # done: retry (the group coordinator may still be loading), then stop rather than guess.
                if time.monotonic() > deadline:
                    raise
                log.warning("cannot read committed offsets yet (%s); retrying", exc)
                time.sleep(RETRY_BACKOFF_SECONDS / 2)
        for committed in found:
            end = parse_in_flight(committed.metadata)
            if end is not None:
                log.info("%s[%d]: a previous sink stopped mid-batch; checking offsets below %d against the store",
                         committed.topic, committed.partition, end)
                self._in_flight[(committed.topic, committed.partition)] = end

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Offsets of revoked partitions can only be committed now, before the rebalance completes.
        self._flush_pending(None)
        self._finish_inserting(None)
        for partition in partitions:
            self._in_flight.pop((partition.topic, partition.partition), None)

    def _flush_pending(self, stop_event: threading.Event | None) -> None:
        """Commit the batch being inserted once it is in, then start inserting the pending one."""
        if not self._finish_inserting(stop_event) or not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        try:
            self._inserting = self._start(batch)
        except Exception:
            self._retry_later(batch, stop_event)

    def _finish_inserting(self, stop_event: threading.Event | None) -> bool:
        """Wait for the batch being inserted and commit it; False when it failed (it is retried)."""
        inserting, self._inserting = self._inserting, None
        if inserting is None:
            return True
        try:
            self._finish(inserting)
            return True
        except Exception:
            self._retry_later(inserting.messages, stop_event)
            return False

    def _retry_later(self, batch: Sequence[MessageLike], stop_event: threading.Event | None) -> None:
        metrics.BATCHES.labels(outcome="failed").inc()
        log.exception("batch of %d messages failed; nothing committed, seeking back to retry", len(batch))
        # Some inserts of the batch may have gone in: retry it as a sink restarting after a crash would.
        for position, end in next_offsets(batch).items():
            self._in_flight[position] = max(self._in_flight.get(position, 0), end)
        # The messages read after it are read again too.
        self._seek_back([*batch, *self._pending])
        self._pending, self._pending_bytes = [], 0
        if stop_event is not None:
            stop_event.wait(RETRY_BACKOFF_SECONDS)

    def _seek_back(self, batch: Sequence[MessageLike]) -> None:
        for (topic, partition), offset in first_offsets(batch).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # partition no longer ours: its new owner re-reads it
                log.info("not seeking %s[%d] back: %s", topic, partition, exc)

    def _commit(self, offsets: dict[tuple[str, int], int], metadata: dict[tuple[str, int], str]) -> None:
        self._consumer.commit(
            offsets=[
                TopicPartition(topic, partition, offset, metadata=metadata.get((topic, partition), ""))
                for (topic, partition), offset in offsets.items()
            ],
            asynchronous=False,
        )

    def _stored(self, interrupted: dict[str, dict[tuple[str, int], tuple[int, int]]]) -> set[Position]:
        """Positions in the ``interrupted`` ranges (per table) that a crashed predecessor already stored."""
        stored: set[Position] = set()
        for table, ranges in interrupted.items():
            for (topic, partition), (first, end) in ranges.items():
                result = self._client.query(
                    f"SELECT kafka_offset FROM {table} WHERE kafka_topic = {{topic:String}} "
                    "AND kafka_partition = {partition:Int32} AND kafka_offset >= {first:Int64} "
                    "AND kafka_offset < {end:Int64}",
                    parameters={"topic": topic, "partition": partition, "first": first, "end": end},
                )
                found = {(topic, partition, row[0]) for row in result.result_rows}
                metrics.REDELIVERED_SKIPPED.labels(table=table).inc(len(found))
                stored |= found
        return stored

    def process_batch(self, messages: Sequence[MessageLike]) -> BatchResult:
        """Frame, dead-letter, insert one container per event kind, then commit the batch's offsets. Blocks.

        Raises on an insert, dead-letter or commit failure; then nothing of the batch is committed.
        Lineage edges go in before the events they come from, so an event found stored after a
        crash always has its edges stored too; the rows derived from traces are derived again for
        the interrupted range (:func:`rederive`).
        """
        return self._finish(self._start(messages))

    def _start(self, messages: Sequence[MessageLike]) -> _Inserting:
        """:meth:`process_batch` up to the inserts, which it leaves running on the writer's thread."""
        plan = plan_batch(messages, self._catalog, dead_letter_topic=self._topics.dlq)
        self._send_dead_letters(plan.dead_letters)
        start, end = first_offsets(messages), next_offsets(messages)
        if start:
            self._commit(start, commit_metadata(end, self._in_flight, inserting=True))
        interrupted = {table: ranges for table, batch in plan.events.items()
                       if (ranges := in_flight_ranges(batch.positions, self._in_flight))}
        stored = self._stored(interrupted)
        if stored:
            plan = plan.without(stored)
            log.info("skipping %d redelivered events already stored", len(stored))
        inserted = self._inserter.submit(insert_plan, self._client, plan, self._catalog,
                                         more_clients=self._insert_clients)
        return _Inserting(messages, plan, interrupted, len(stored), end, inserted)

    def _finish(self, inserting: _Inserting) -> BatchResult:
        """:meth:`process_batch` from the inserts on: wait for them, then commit. Blocks."""
        plan, interrupted, end = inserting.plan, inserting.interrupted, inserting.end
        self._send_dead_letters(inserting.inserted.result())
        for table, ranges in interrupted.items():
            restore_ledger(self._client, table, ranges)
        rederive(self._client, interrupted.get("prediction_traces", {}))
        if end:
            self._commit(end, commit_metadata(end, self._in_flight, inserting=False))
            for position, offset in end.items():
                if self._in_flight.get(position, -1) <= offset:
                    self._in_flight.pop(position, None)
        metrics.BATCHES.labels(outcome="committed").inc()
        self._update_lag(end)
        return BatchResult(
            rows_by_table={table: len(batch.raws) for table, batch in plan.events.items()},
            dead_letters=len(plan.dead_letters),
            committed=end,
            skipped=inserting.skipped,
        )

    def _update_lag(self, committed: dict[tuple[str, int], int]) -> None:
        # The high watermarks the fetches brought: asking the broker instead waited behind the
        # consumer's own long-polling fetches, up to half a second a partition (bench/sink.py).
        for (topic, partition), offset in committed.items():
            watermarks = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if watermarks is not None and watermarks[1] >= 0:
                metrics.LAG.labels(topic=topic, partition=str(partition)).set(max(watermarks[1] - offset, 0))

    def _send_dead_letters(self, dead_letters: Sequence[DeadLetter]) -> None:
        if not dead_letters:
            return
        failures: list[str] = []

        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        for letter in dead_letters:
            log.warning(
                "dead-lettering %s[%d]@%d: %s", letter.origin.topic, letter.origin.partition,
                letter.origin.offset, letter.error,
            )
            self._producer.produce(
                self._topics.dlq, value=letter.origin.raw, key=letter.key, headers=letter.headers(),
                on_delivery=on_delivery,
            )
        undelivered = self._producer.flush(DLQ_FLUSH_TIMEOUT_SECONDS)
        if undelivered or failures:
            raise DeadLetterError(
                f"{undelivered + len(failures)} dead letters not delivered to {self._topics.dlq} "
                f"({'; '.join(failures[:3]) or 'flush timed out'}); check the broker and that the topic exists"
            )
        for letter in dead_letters:
            metrics.DLQ_MESSAGES.labels(reason=letter.reason).inc()
