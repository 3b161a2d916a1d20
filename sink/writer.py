"""The Kafka -> ClickHouse loop.

At-least-once into an idempotent store: a batch's offsets are committed only after every insert of
the batch succeeded and its dead letters were delivered, so a crash re-delivers the batch, and the
tables (ReplacingMergeTree ordered by ... event_id) collapse the re-delivered rows.

:func:`plan_batch` and :func:`next_offsets` are pure; :class:`SinkWriter` is the I/O shell.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from schemas import Catalog, SchemaError, Topics, default_catalog
from sink import metrics
from sink.errors import DeadLetterError
from sink.rows import Origin, table_for, to_row
from sink.settings import SinkSettings

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 0.1  # how often the loop looks at the stop event while idle
RETRY_BACKOFF_SECONDS = 1.0
DLQ_FLUSH_TIMEOUT_SECONDS = 10.0
HEADER_REASON = "provline-dlq-reason"
HEADER_ERROR = "provline-dlq-error"
HEADER_TOPIC = "provline-source-topic"
HEADER_PARTITION = "provline-source-partition"
HEADER_OFFSET = "provline-source-offset"


class MessageLike(Protocol):
    """The part of ``confluent_kafka.Message`` the writer reads."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class DeadLetter:
    origin: Origin
    key: bytes | None
    reason: str  # short and stable: the error class, used as a metric label
    error: str  # the full message, for people

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (HEADER_REASON, self.reason.encode()),
            (HEADER_ERROR, self.error.encode()),
            (HEADER_TOPIC, self.origin.topic.encode()),
            (HEADER_PARTITION, str(self.origin.partition).encode()),
            (HEADER_OFFSET, str(self.origin.offset).encode()),
        ]


@dataclass
class BatchPlan:
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)  # table -> rows
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> column names
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True)
class BatchResult:
    rows_by_table: dict[str, int]
    dead_letters: int
    committed: dict[tuple[str, int], int]  # (topic, partition) -> next offset to read


def _origin(message: MessageLike) -> Origin:
    return Origin(
        topic=message.topic() or "", partition=message.partition() or 0, offset=message.offset() or 0,
        raw=message.value() or b"",
    )


def plan_batch(messages: Iterable[MessageLike], catalog: Catalog) -> BatchPlan:
    """Decode every message; rows grouped per table, undecodable messages as dead letters."""
    plan = BatchPlan()
    for message in messages:
        origin = _origin(message)
        try:
            if not origin.raw:
                raise SchemaError("empty message value (a tombstone?); provline events are never empty")
            decoded = catalog.decode(origin.raw)
            spec = table_for(decoded.record)
        except (SchemaError, ValueError) as exc:
            plan.dead_letters.append(DeadLetter(origin, message.key(), type(exc).__name__, str(exc)))
            continue
        plan.columns[spec.table] = spec.columns
        plan.rows.setdefault(spec.table, []).append(to_row(decoded.record, decoded.value, origin))
    return plan


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
    return [topics.lineage, topics.inference, topics.traces, topics.drift]


def consumer_config(settings: SinkSettings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": settings.consumer_group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }


def producer_config(settings: SinkSettings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "acks": "all"}


class SinkWriter:
    """Consumes the lineage, inference, traces and drift topics into ClickHouse.

    Owns one Kafka consumer and one DLQ producer; ``client`` must not be used by other threads
    while :meth:`run` is going. Not thread-safe: one thread calls :meth:`run`, another may set the
    stop event.
    """

    def __init__(self, settings: SinkSettings, client: Client, *, catalog: Catalog | None = None) -> None:
        self._settings = settings
        self._client = client
        self._catalog = catalog or default_catalog()
        self._topics = Topics(settings.topic_prefix)
        self._consumer = Consumer(consumer_config(settings))
        self._producer = Producer(producer_config(settings))
        self._pending: list[MessageLike] = []

    def run(self, stop_event: threading.Event) -> None:
        """Consume, insert and commit until ``stop_event`` is set; blocks. Closes the consumer at the end.

        The batch in hand when the event is set is still inserted and committed. A batch whose
        insert fails is not committed: the consumer seeks back to it and retries after a pause.
        """
        self._consumer.subscribe(source_topics(self._topics), on_revoke=self._on_revoke)
        try:
            while not stop_event.is_set():
                self._fill(stop_event)
                self._flush_pending(stop_event)
            self._flush_pending(stop_event)
        finally:
            self.close()

    def close(self) -> None:
        self._producer.flush(DLQ_FLUSH_TIMEOUT_SECONDS)
        self._consumer.close()

    def _fill(self, stop_event: threading.Event) -> None:
        deadline: float | None = None
        while len(self._pending) < self._settings.batch_max_events and not stop_event.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            timeout = POLL_INTERVAL_SECONDS if deadline is None else min(POLL_INTERVAL_SECONDS, deadline - now)
            wanted = self._settings.batch_max_events - len(self._pending)
            for message in self._consumer.consume(num_messages=wanted, timeout=timeout):
                error = message.error()
                if error is None:
                    self._pending.append(message)
                else:
                    self._on_consumer_error(error)
            if self._pending and deadline is None:
                deadline = time.monotonic() + self._settings.batch_max_seconds

    def _on_consumer_error(self, error: KafkaError) -> None:
        metrics.CONSUMER_ERRORS.labels(code=error.name()).inc()
        if error.fatal():
            raise KafkaException(error)
        log.warning("Kafka consumer error (will keep consuming): %s", error)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Offsets of revoked partitions can only be committed now, before the rebalance completes.
        self._flush_pending(None)

    def _flush_pending(self, stop_event: threading.Event | None) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self.process_batch(batch)
        except Exception:
            metrics.BATCHES.labels(outcome="failed").inc()
            log.exception("batch of %d messages failed; nothing committed, seeking back to retry", len(batch))
            self._seek_back(batch)
            if stop_event is not None:
                stop_event.wait(RETRY_BACKOFF_SECONDS)

    def _seek_back(self, batch: Sequence[MessageLike]) -> None:
        for (topic, partition), offset in first_offsets(batch).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # partition no longer ours: its new owner re-reads it
                log.info("not seeking %s[%d] back: %s", topic, partition, exc)

    def process_batch(self, messages: Sequence[MessageLike]) -> BatchResult:
        """Decode, dead-letter, insert one batch per table, then commit the batch's offsets. Blocks.

        Raises on an insert, dead-letter or commit failure; then nothing of the batch is committed.
        """
        plan = plan_batch(messages, self._catalog)
        self._send_dead_letters(plan.dead_letters)
        for table, rows in plan.rows.items():
            with metrics.INSERT_SECONDS.labels(table=table).time():
                self._client.insert(table, rows, column_names=list(plan.columns[table]))
            metrics.ROWS_WRITTEN.labels(table=table).inc(len(rows))
        committed = next_offsets(messages)
        if committed:
            self._consumer.commit(
                offsets=[TopicPartition(topic, partition, offset) for (topic, partition), offset in committed.items()],
                asynchronous=False,
            )
        metrics.BATCHES.labels(outcome="committed").inc()
        return BatchResult(
            rows_by_table={table: len(rows) for table, rows in plan.rows.items()},
            dead_letters=len(plan.dead_letters),
            committed=committed,
        )

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
